"""Batched lesions: several lesions' network inputs through one sampling call, each keeping its own generator.

Lesions whose inputs have the same shape (crop, text length) are stacked along the batch axis, at most
``max_batch`` at a time; the sampler draws row i's noise from generator i alone (``diffusion.batch_randn``),
so each lesion gets what it would get sampled alone with the same generator, up to floating-point
reassociation in the batched kernels. Results come back in the lesions' order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ld_augment.errors import ConfigError

#: Released sizes at batch 8 stay well inside 24 GB in bf16 (benchmarks/bench_diffusion_engine.py reports peaks).
DEFAULT_MAX_BATCH = 8

Item = tuple[torch.Tensor, "torch.Tensor | None", torch.Generator]
SampleFn = Callable[[torch.Tensor, "torch.Tensor | None", list[torch.Generator]], torch.Tensor]


def check_max_batch(value: int) -> int:
    if int(value) != value or int(value) < 1:
        raise ConfigError(f"max_batch must be a positive integer (lesions per network call), got {value!r}")
    return int(value)


def _key(item: Item) -> tuple:
    x, context, _ = item
    return (tuple(x.shape[1:]), None if context is None else tuple(context.shape[1:]))


def sample_in_batches(items: Sequence[Item], sample: SampleFn, *, max_batch: int = DEFAULT_MAX_BATCH
                      ) -> list[torch.Tensor]:
    """``sample(x, context, generators)`` over groups of same-shaped items; one [1, ...] result per item.

    Each item is (input [1, ...], context [1, ...] or None, generator).
    """
    max_batch = check_max_batch(max_batch)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(_key(item), []).append(i)
    results: list[torch.Tensor | None] = [None] * len(items)
    for indices in groups.values():
        for lo in range(0, len(indices), max_batch):
            chunk = indices[lo : lo + max_batch]
            x = torch.cat([items[i][0] for i in chunk])
            contexts = [items[i][1] for i in chunk]
            context = None if contexts[0] is None else torch.cat(contexts)  # type: ignore[arg-type]
            out = sample(x, context, [items[i][2] for i in chunk])
            for row, i in enumerate(chunk):
                results[i] = out[row : row + 1]
    return results  # type: ignore[return-value]
