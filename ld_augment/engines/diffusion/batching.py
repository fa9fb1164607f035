"""Batched lesions: several lesions' network inputs through one sampling call, each keeping its own generator.

Lesions whose inputs have the same shape (crop, text length, extra per-row inputs) are stacked along the batch
axis, at most ``max_batch`` at a time; the sampler draws row i's noise from generator i alone
(``diffusion.batch_randn``), so each lesion gets what it would get sampled alone with the same generator, up to
floating-point reassociation in the batched kernels. Results come back in the lesions' order.

Across cases (the bank): ``LockstepBatcher`` lets several threads, one case each, pool their
``sample_in_batches`` calls. It dispatches only when every live participant is waiting, so round r always
holds the r-th call of each participant, whatever the threads' timing: the batches, and so the results, are
deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ld_augment.errors import ConfigError

#: Released sizes at batch 8 stay well inside 24 GB in bf16 (benchmarks/bench_diffusion_engine.py reports peaks).
DEFAULT_MAX_BATCH = 8

#: (input [1, ...], context [1, ...] or None, generator, *extra per-row inputs [1, ...])
Item = tuple
#: sample(x, context, generators, *extras) -> [B, ...]
SampleFn = Callable[..., torch.Tensor]


def check_max_batch(value: int) -> int:
    if int(value) != value or int(value) < 1:
        raise ConfigError(f"max_batch must be a positive integer (lesions per network call), got {value!r}")
    return int(value)


def _key(item: Item) -> tuple:
    x, context, _, *extras = item
    return (tuple(x.shape[1:]), None if context is None else tuple(context.shape[1:]),
            tuple(tuple(e.shape[1:]) for e in extras))


def _sample_grouped(items: Sequence[Item], sample: SampleFn, max_batch: int) -> list[torch.Tensor]:
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
            extras = [torch.cat([items[i][3 + e] for i in chunk]) for e in range(len(items[chunk[0]]) - 3)]
            out = sample(x, context, [items[i][2] for i in chunk], *extras)
            for row, i in enumerate(chunk):
                results[i] = out[row : row + 1]
    return results  # type: ignore[return-value]


def sample_in_batches(items: Sequence[Item], sample: SampleFn, *, max_batch: int = DEFAULT_MAX_BATCH,
                      pool_key: Hashable | None = None) -> list[torch.Tensor]:
    """``sample(x, context, generators, *extras)`` over groups of same-shaped items; one [1, ...] result each.

    Each item is (input [1, ...], context [1, ...] or None, generator, *extras [1, ...]). Inside
    ``LockstepBatcher.participate`` the call is pooled with the other participants' calls of the same
    ``pool_key`` (the engine: calls pooled together must share ``sample``); without a key it runs alone.
    """
    max_batch = check_max_batch(max_batch)
    pool = getattr(_local, "pool", None)
    if pool is not None and pool_key is not None:
        batcher, index = pool
        return batcher.submit(index, list(items), sample, max_batch, pool_key)
    return _sample_grouped(items, sample, max_batch)


_local = threading.local()


@dataclass
class _Request:
    items: list
    sample: SampleFn
    max_batch: int
    key: Hashable
    results: list[torch.Tensor] | None = None
    error: BaseException | None = None


class LockstepBatcher:
    """Pools the ``sample_in_batches`` calls of ``participants`` threads into shared network calls.

    Each thread runs ``with batcher.participate(i): ...`` (i = 0..participants-1, its case's position). A
    call waits until every participant still inside ``participate`` is waiting too, then all pending calls
    run together: grouped by ``pool_key``, items in participant order, at most the first call's
    ``max_batch`` rows per network call. A participant that leaves (its case finished or failed) no longer
    holds the others up.
    """

    def __init__(self, participants: int) -> None:
        if int(participants) < 1:
            raise ConfigError(f"participants must be >= 1, got {participants}")
        self._cond = threading.Condition()
        self._live = set(range(int(participants)))
        self._pending: dict[int, _Request] = {}
        self.rounds = 0  # dispatches so far (logged by the bank)

    @contextmanager
    def participate(self, index: int) -> Iterator[None]:
        if index not in self._live:
            raise ConfigError(f"participant {index} is not live in this batcher")
        _local.pool = (self, index)
        try:
            yield
        finally:
            _local.pool = None
            with self._cond:
                self._live.discard(index)
                self._dispatch_if_ready()

    def submit(self, index: int, items: list, sample: SampleFn, max_batch: int, key: Hashable
               ) -> list[torch.Tensor]:
        request = _Request(items, sample, max_batch, key)
        with self._cond:
            self._pending[index] = request
            self._dispatch_if_ready()
            while request.results is None and request.error is None:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.results  # type: ignore[return-value]

    def _dispatch_if_ready(self) -> None:
        """Run every pending call once all live participants wait (called with the lock held; the others are
        all blocked, so running the networks under the lock costs nothing)."""
        if not self._pending or set(self._pending) != self._live:
            return
        pending, self._pending = [self._pending[i] for i in sorted(self._pending)], {}
        by_key: dict[Hashable, list[_Request]] = {}
        for request in pending:
            by_key.setdefault(request.key, []).append(request)
        self.rounds += 1
        for requests in by_key.values():
            merged = [item for r in requests for item in r.items]
            try:
                out = _sample_grouped(merged, requests[0].sample, requests[0].max_batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every thread whose call was in it
                for r in requests:
                    r.error = exc
                continue
            start = 0
            for r in requests:
                r.results, start = out[start : start + len(r.items)], start + len(r.items)
        self._cond.notify_all()
