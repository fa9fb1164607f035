"""One process or many: the torch.distributed context a training run works in.

`torchrun` (single node or `--nnodes`/`--rdzv-endpoint`) sets RANK, WORLD_SIZE and LOCAL_RANK; `init` then joins
the process group (gloo on CPU, nccl on CUDA) and picks this rank's device. Without those variables the run is a
plain single process and every helper here is the identity, so the loop has one code path from one CPU process
to many GPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ld_augment.errors import ConfigError
from ld_augment.nets import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world_size` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this context initialised the process group (and tears it down)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init(device: str) -> DistContext:
    """Join the torchrun process group when there is one; choose this rank's device.

    device "cuda" under torchrun means cuda:LOCAL_RANK (one GPU per process), as torchrun's convention is.
    """
    world = env_world_size()
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, 0, resolve_device(device), False)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        owns = True
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)
    log.info("rank %d/%d on %s (%s)", ctx.rank, ctx.world_size, ctx.device, dist.get_backend())
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group this context created (a caller's own group is left alone)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_floats(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged figure over the ranks (the figure of the global batch when shards are equal)."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = t.to(ctx.device) if ctx.device.type == "cuda" else t
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.cpu().tolist())}


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the incoming gradients.

    Hand-written (ten lines) because torch's own autograd collective (torch.distributed.nn) is deprecated
    and its successor is private API.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone()
        dist.all_reduce(out)
        return out


def global_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, differentiable: a term pooled over the whole batch (LINet's Dice) then has the same
    value and, after DDP averages the gradients, the same gradient as in one process with the global batch.

    Why the gradient comes out right: the backward sums every rank's upstream gradient (world_size times the
    true one, each rank holding the same loss), and DDP divides the parameter gradients by world_size.
    """
    if not ctx.distributed:
        return tensor
    return _SumOverRanks.apply(tensor)


def average_tensor(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a (non-differentiated) tensor over the ranks, e.g. a gradient computed outside DDP."""
    if not ctx.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / ctx.world_size


def broadcast_object(ctx: DistContext, obj: object) -> object:
    """Rank 0's value of `obj` on every rank (e.g. whether a resumable state exists on rank 0's disk)."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
