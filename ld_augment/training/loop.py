"""The one training loop shared by LMNet, LINet and the VQ: AdamW, EMA, DDP, atomic resumable state, JSONL log.

Why resuming is exact: every random draw of a sample (its crop, timestep and noise) comes from generators seeded
by (seed, global sample index), never from a stream that advances across steps, and the state file holds the
weights, the EMA copy, the optimizer (and fp16 scaler) states and the step. A run interrupted after step k and
resumed therefore repeats steps k+1.. with the same inputs as an uninterrupted run and ends with the same weights.

Why a DDP run equals one process with the same global batch: step s uses the global sample indices
s*G .. s*G+G-1 (G = batch_size * world_size * grad_accum); rank r takes its own contiguous micro-batches of
them, DDP averages the gradients, and every per-sample draw is tied to the sample index, not to the rank.
The learning rate is constant after an optional linear warm-up (as the original's configs), so extending
`steps` on resume is allowed too.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.io.atomic import atomic_save_figure, atomic_write_text
from ld_augment.nets import autocast_context, resolve_device
from ld_augment.nets.checkpoints import atomic_torch_save
from ld_augment.nets.precision import PRECISIONS
from ld_augment.training import distributed as D
from ld_augment.training.crops import collate

STATE_FORMAT = "ld-augment-train/1"
log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation and bookkeeping options common to every network (validated on construction).

    batch_size is per process and micro-batch: the global batch of one optimizer step is
    batch_size * world_size * grad_accum.
    """

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # "adamw" | "adam" (the original's VQ)
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float | None = 0.9999  # None or 0: no EMA, the raw weights are final
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 500
    resume: bool = True
    num_workers: int = 0
    progress: bool = True
    grad_clip: float | None = None
    grad_accum: int = 1
    warmup_steps: int = 0
    tensorboard: bool = False
    sample_every: int = 0  # PNG (and TensorBoard) samples every N steps; 0 = never

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (or None), got {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {list(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid: {list(PRECISIONS)}")
        resolve_device(self.device)

    # Options that change the result of a step; a resumed run must use the same ones.
    RESULT_KEYS = ("batch_size", "lr", "weight_decay", "optimizer", "betas", "ema_decay", "precision", "seed",
                   "grad_clip", "grad_accum", "warmup_steps")

    def lr_at(self, step: int, base: float | None = None) -> float:
        """The learning rate of (1-based) step `step`: linear warm-up over warmup_steps, then constant."""
        lr = self.lr if base is None else base
        return lr * min(1.0, step / self.warmup_steps) if self.warmup_steps else lr


class EMA:
    """Exponential moving average of a module's parameters, with the LDM warm-up decay min(d, (1+n)/(10+n)).

    The warm-up lets the average follow the fast early changes, so short fine-tuning runs are not dominated by
    the initial weights. Buffers are copied, not averaged. Every rank holds the same parameters after the
    all-reduced step, so every rank's EMA is the same without communication.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU torch generator for step `step` (timesteps, noise), independent of every other step."""
    value = int(np.random.default_rng([int(seed), int(step), 1000 + int(stream)]).integers(2**63 - 1))
    return torch.Generator().manual_seed(value)


def seeded_build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with weights from `seed`, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory()


def sample_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """A CPU torch generator for global sample `index`: the same draws whichever rank or step computes it."""
    value = int(np.random.default_rng([int(seed), int(index), 2000 + int(stream)]).integers(2**63 - 1))
    return torch.Generator().manual_seed(value)


@dataclass
class StepInfo:
    """What a loss function may know about the micro-batch it computes (and where its random draws come from)."""

    step: int                 # the 1-based step being computed
    micro: int                # micro-batch index within the step (gradient accumulation)
    indices: list[int]        # global sample indices of the micro-batch's samples
    seed: int
    ctx: D.DistContext
    _gens: dict[int, list[torch.Generator]] = field(default_factory=dict)

    def generators(self, stream: int = 0) -> list[torch.Generator]:
        """One generator per sample (the same list on repeated calls, so successive draws continue)."""
        if stream not in self._gens:
            self._gens[stream] = [sample_generator(self.seed, i, stream) for i in self.indices]
        return self._gens[stream]


def draw_timesteps(gens: torch.Generator | Sequence[torch.Generator], batch: int, num_timesteps: int
                   ) -> torch.Tensor:
    """t ~ U{0..T-1} per sample, on the CPU: from one generator, or one per sample (shard-invariant)."""
    if isinstance(gens, torch.Generator):
        return torch.randint(0, num_timesteps, (batch,), generator=gens)
    return torch.cat([torch.randint(0, num_timesteps, (1,), generator=g) for g in gens])


def draw_noise(gens: torch.Generator | Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """N(0, I) of `shape` = [B, ...], on the CPU: from one generator, or one per sample (shard-invariant)."""
    if isinstance(gens, torch.Generator):
        return torch.randn(tuple(shape), generator=gens)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gens])


LossFn = Callable[[nn.Module, dict[str, Any], StepInfo], tuple[torch.Tensor, dict[str, float]]]
PhaseLossFn = Callable[[nn.Module, dict[str, Any], StepInfo], "tuple[torch.Tensor, dict[str, float]] | None"]
SampleFn = Callable[[nn.Module, int], Any]  # (module for inference, step) -> matplotlib figure


@dataclass
class Phase:
    """A second module trained in the same step with its own optimizer (the VQ-GAN's discriminators).

    `loss_fn(wrapped_module, batch, info)` runs after the main update for every micro-batch; it returns None
    when the phase is off at that step (e.g. before the discriminator starts).
    """

    name: str
    module: nn.Module
    loss_fn: PhaseLossFn
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    optimizer: str = "adamw"


@dataclass
class TrainPaths:
    state: Path
    log: Path
    final: Path

    @classmethod
    def for_run(cls, out_dir: str | Path, name: str) -> "TrainPaths":
        out = Path(out_dir)
        return cls(out / f"{name}_train_state.pt", out / f"{name}_log.jsonl", out / f"{name}.pt")


# Settings added after a state format was first written: a state without them was written with these values.
_LATER_DEFAULTS: dict[str, Any] = {"grad_accum": 1, "warmup_steps": 0, "phases": []}


def _check_resumable(stored: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    keys = sorted(set(stored) | set(meta))
    stored = {**_LATER_DEFAULTS, **stored}
    diff = [k for k in keys if k not in ("steps", "init", "device", "num_workers", "progress", "save_every")
            and stored.get(k) != meta.get(k)]
    if diff:
        shown = "; ".join(f"{k}: saved {stored.get(k)!r} vs now {meta.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"{path} was written by a run with other settings ({shown}); resume with the same "
                          "settings, choose another --out, or pass resume=False (--no-resume) to start over")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after `step` (written before an interruption and about to be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def _load_state(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"{path}: unreadable training state ({exc}); delete it or pass --no-resume") from None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an ld-augment training state ({STATE_FORMAT!r} expected)")
    return raw


class _ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's sample indices, step by step: micro-batch a of step s holds s*G + (a*W + r)*B + [0, B)."""

    def __init__(self, start: int, steps: int, batch: int, world: int, rank: int, accum: int) -> None:
        self.start, self.steps, self.batch, self.world, self.rank, self.accum = start, steps, batch, world, rank, accum

    def indices(self, step0: int, micro: int) -> list[int]:
        g = self.batch * self.world * self.accum
        base = step0 * g + (micro * self.world + self.rank) * self.batch
        return list(range(base, base + self.batch))

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start, self.steps):
            for a in range(self.accum):
                yield from self.indices(s, a)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum * self.batch


@dataclass
class _Part:
    """A trained module with its DDP wrapper, optimizer and scaler."""

    name: str
    module: nn.Module
    net: nn.Module               # DDP wrapper or the module itself
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    base_lr: float
    loss_fn: Any

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict()}


def _wrap(module: nn.Module, ctx: D.DistContext) -> nn.Module:
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def _make_part(name: str, module: nn.Module, loss_fn: Any, lr: float, weight_decay: float, betas: tuple[float, float],
               opts: TrainOptions, ctx: D.DistContext, optimizer: str = "adamw") -> _Part:
    params = [p for p in module.parameters() if p.requires_grad]
    opt = OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=opts.precision == "fp16" and ctx.device.type == "cuda")
    return _Part(name, module, _wrap(module, ctx), opt, scaler, lr, loss_fn)


@dataclass
class FitResult:
    """The final module (EMA when kept) and the distributed context it was trained in."""

    module: nn.Module
    ctx: D.DistContext
    start_world_size: int | None  # the world size of the run that wrote the resumed state (None: fresh run)


def fit(name: str, model: nn.Module, loss_fn: LossFn, dataset: torch.utils.data.Dataset, opts: TrainOptions,
        out_dir: str | Path, meta: Mapping[str, Any], *, ctx: D.DistContext | None = None,
        phases: Sequence[Phase] = (), callback: StepCallback | None = None,
        sample_fn: SampleFn | None = None, ema_start: tuple[Mapping[str, Any], int] | None = None) -> FitResult:
    """Train `model` (already on ctx.device) for opts.steps steps; return the final module (EMA if kept).

    `loss_fn(net, batch, info)` computes the loss of one micro-batch with `net` (the DDP wrapper under torchrun:
    call it, not the bare model, so gradients are all-reduced). `meta` (JSON-like) describes the run: config,
    encoder, crop, ...; a resumed state must have been written with the same meta. `phases` are further
    modules with their own optimizers (the VQ-GAN discriminators). `callback(step, logs)` runs after each step
    (tests use it to simulate interruptions); `sample_fn(module, step)` draws the periodic PNG sample.
    `ema_start` = (weights, update count) continues an existing EMA (a released file's model_ema.* and its
    num_updates) instead of starting one from `model` with a fresh warm-up.
    On KeyboardInterrupt the state of the last finished step is saved before re-raising.
    """
    ctx = ctx or D.init(opts.device)
    paths = TrainPaths.for_run(out_dir, name)
    if ctx.is_main:
        paths.state.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps({**dict(meta), **{k: asdict(opts)[k] for k in TrainOptions.RESULT_KEYS}}))
    meta["phases"] = [p.name for p in phases]
    parts = [_make_part("model", model, loss_fn, opts.lr, opts.weight_decay, opts.betas, opts, ctx, opts.optimizer)]
    parts += [_make_part(p.name, p.module, p.loss_fn, p.lr, p.weight_decay, p.betas, opts, ctx, p.optimizer)
              for p in phases]
    ema = EMA(model, opts.ema_decay) if opts.ema_decay else None
    if ema is not None and ema_start is not None:
        ema.module.load_state_dict(dict(ema_start[0]))
        ema.num_updates = int(ema_start[1])
    start, stored_world = 0, None
    has_state = D.broadcast_object(ctx, bool(opts.resume and paths.state.is_file()))
    if has_state:
        state = _load_state(paths.state)
        _check_resumable(state["meta"], meta, paths.state)
        model.load_state_dict(state["model"])
        parts[0].opt.load_state_dict(state["optimizer"])
        parts[0].scaler.load_state_dict(state["scaler"])
        for part in parts[1:]:
            saved = (state.get("phases") or {}).get(part.name)
            if saved is None:
                raise CheckpointError(f"{paths.state} holds no state of {part.name!r}; pass --no-resume")
            part.module.load_state_dict(saved["module"])
            part.opt.load_state_dict(saved["optimizer"])
            part.scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        stored_world = int(state.get("world_size", 1))
        if stored_world != ctx.world_size and ctx.is_main:
            log.warning("%s: the state was written with world_size %d, now %d: the global batch changes from %s to "
                        "%d and the run no longer repeats the uninterrupted one exactly", name, stored_world,
                        ctx.world_size, state.get("global_batch"), global_batch(opts, ctx))
        if ctx.is_main:
            log.info("%s: resuming %s at step %d", name, paths.state, start)
    elif ctx.is_main and paths.log.is_file():
        paths.log.unlink()  # a fresh run: the old log describes other weights
    if ctx.is_main:
        _truncate_log(paths.log, start)
    if start < opts.steps:
        _Runner(name, parts, ema, dataset, opts, paths, meta, ctx, callback, sample_fn).run(start)
    D.barrier(ctx)
    final = ema.module if ema is not None else model.eval()
    return FitResult(final, ctx, stored_world)


def global_batch(opts: TrainOptions, ctx: D.DistContext) -> int:
    return opts.batch_size * ctx.world_size * opts.grad_accum


class _Runner:
    """The step loop of `fit` (one object so the saving, logging and sampling helpers share its state)."""

    def __init__(self, name: str, parts: list[_Part], ema: EMA | None, dataset: torch.utils.data.Dataset,
                 opts: TrainOptions, paths: TrainPaths, meta: Mapping[str, Any], ctx: D.DistContext,
                 callback: StepCallback | None, sample_fn: SampleFn | None) -> None:
        self.name, self.parts, self.ema, self.dataset, self.opts = name, parts, ema, dataset, opts
        self.paths, self.meta, self.ctx, self.callback, self.sample_fn = paths, meta, ctx, callback, sample_fn
        self.global_batch = global_batch(opts, ctx)
        self.tb = self._tensorboard() if ctx.is_main and opts.tensorboard else None

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            log.warning("tensorboard is not installed; scalars go to the JSONL log only")
            return None
        return SummaryWriter(str(self.paths.state.parent / "tensorboard" / self.name))

    def save(self, step: int) -> None:
        if not self.ctx.is_main:
            return
        main = self.parts[0]
        payload = {
            "format": STATE_FORMAT, "step": step, "model": main.module.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "optimizer": main.opt.state_dict(),
            "scaler": main.scaler.state_dict(), "phases": {p.name: p.state_dict() for p in self.parts[1:]},
            "meta": json.loads(json.dumps(dict(self.meta))), "world_size": self.ctx.world_size,
            "global_batch": self.global_batch,
        }
        atomic_torch_save(payload, self.paths.state, what="training state")

    def run(self, start: int) -> None:
        opts, ctx = self.opts, self.ctx
        sampler = _ShardSampler(start, opts.steps, opts.batch_size, ctx.world_size, ctx.rank, opts.grad_accum)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=opts.batch_size, sampler=sampler,
                                             num_workers=opts.num_workers, collate_fn=collate,
                                             pin_memory=ctx.device.type == "cuda")
        step, consistent = start, True
        bar = tqdm(total=opts.steps, initial=start, desc=f"train {self.name}", unit="step",
                   disable=not (opts.progress and ctx.is_main))
        for part in self.parts:
            part.module.train()
        batches = iter(loader)
        log_file = self.paths.log.open("a", encoding="utf-8") if ctx.is_main else None
        try:
            while step < opts.steps:
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(opts.grad_accum)]
                infos = [StepInfo(step + 1, a, sampler.indices(step, a), opts.seed, ctx)
                         for a in range(opts.grad_accum)]
                consistent = False  # weights change from here until the step counter catches up
                logs: dict[str, float] = {}
                for part in self.parts:
                    logs.update(self._update(part, micro, infos, step + 1))
                    if part is self.parts[0] and self.ema is not None:
                        self.ema.update(part.module)
                step += 1
                consistent = True
                logs = D.mean_floats(ctx, logs)
                seconds = time.perf_counter() - t0
                self._record(log_file, step, logs, seconds, infos[0].indices[0])
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}")
                if step % opts.save_every == 0 or step == opts.steps:
                    self.save(step)
                if opts.sample_every and self.sample_fn is not None and ctx.is_main and (
                        step % opts.sample_every == 0 or step == opts.steps):
                    self._sample(step)
                if self.callback is not None:
                    self.callback(step, logs)
        except KeyboardInterrupt:
            if step > start and consistent:
                self.save(step)
                log.warning("%s: interrupted; state of step %d saved to %s (run again to resume)", self.name, step,
                            self.paths.state)
            raise
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            if self.tb is not None:
                self.tb.close()

    def _update(self, part: _Part, micro: list[dict[str, Any]], infos: list[StepInfo], step: int
                ) -> dict[str, float]:
        """Forward/backward over the micro-batches (DDP syncs on the last) and one optimizer step of `part`."""
        opts, main = self.opts, part is self.parts[0]
        part.opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        active = False
        for a, (batch, info) in enumerate(zip(micro, infos)):
            last = a == len(micro) - 1
            sync = part.net.no_sync() if (self.ctx.distributed and not last) else _null()
            with sync:
                with autocast_context(self.ctx.device, opts.precision):
                    out = part.loss_fn(part.net, batch, info)
                if out is None:  # the phase is off at this step
                    continue
                loss, parts_logs = out
                if not torch.isfinite(loss):
                    raise ConfigError(f"{self.name}: {part.name} loss became {float(loss)} at step {step}; lower "
                                      "--lr or use --precision fp32")
                part.scaler.scale(loss / len(micro)).backward()
                active = True
            key = "loss" if main else f"{part.name}_loss"
            for k, v in {key: float(loss.detach()), **parts_logs}.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        if not active:
            return sums
        for group in part.opt.param_groups:
            group["lr"] = opts.lr_at(step, part.base_lr)
        part.scaler.unscale_(part.opt)
        norm = torch.nn.utils.clip_grad_norm_(part.module.parameters(), opts.grad_clip or math.inf)
        part.scaler.step(part.opt)
        part.scaler.update()
        prefix = "" if main else f"{part.name}_"
        sums[f"{prefix}grad_norm"] = float(norm)
        sums[f"{prefix}lr"] = part.opt.param_groups[0]["lr"]
        return sums

    def _record(self, log_file: Any, step: int, logs: dict[str, float], seconds: float, first_index: int) -> None:
        if log_file is None:
            return
        epoch_len = int(getattr(self.dataset, "epoch_length", 0) or 0)
        record = {"step": step, **logs, "seconds": round(seconds, 4),
                  "samples_per_s": round(self.global_batch / max(seconds, 1e-9), 3),
                  "world_size": self.ctx.world_size, "global_batch": self.global_batch}
        if epoch_len:
            record["epoch"] = first_index // epoch_len
        try:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        except OSError as exc:  # a full disk: name the log, not just "[Errno 28]"
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.paths.log)) from None
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(f"{self.name}/{key}", value, step)

    def _sample(self, step: int) -> None:
        module = self.ema.module if self.ema is not None else self.parts[0].module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                fig = self.sample_fn(module, step)  # type: ignore[misc]
        finally:
            module.train(was_training)
        if fig is None:
            return
        path = self.paths.state.parent / "samples" / f"{self.name}_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_figure(fig, path)
        if self.tb is not None:
            self.tb.add_figure(f"{self.name}/sample", fig, step)  # closes the figure
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
