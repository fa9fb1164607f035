"""How bank and real cases are mixed, as plain data structures (no nnU-Net import, so it is testable alone).

nnU-Net's `nnUNetDataLoader` draws every sample uniformly from `dataset.identifiers` and calls
`dataset.load_case(key)`. Rather than copy its `get_dataloaders`, the trainer hands it a `MixedDataset` whose
identifier list holds each real key `real_copies` times and each bank key `bank_copies` times, chosen so that a
uniform draw is a bank case with probability `ratio`. The loader, its foreground oversampling and the
augmentation pipeline stay nnU-Net's own; bank keys carry a prefix, so the batch's `keys` say what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ld_augment.errors import ConfigError

BANK_PREFIX = "ldbank__"


@dataclass(frozen=True)
class Replication:
    real_copies: int
    bank_copies: int
    effective_ratio: float   # exact probability of a bank draw with these copy counts


def replication_for(n_real: int, n_bank: int, ratio: float, max_len: int = 20000) -> Replication:
    """Integer copy counts whose bank share is closest to `ratio` with at most ~`max_len` identifiers.

    The cap bounds the per-batch cost of `np.random.choice` over the list; the error left is reported as
    `effective_ratio` (for typical bank sizes it is exact or within 1e-3).
    """
    if ratio <= 0.0 or n_bank == 0:
        return Replication(1, 0, 0.0)
    if ratio >= 1.0 or n_real == 0:
        return Replication(0, 1, 1.0)
    wanted = ratio * n_real / ((1.0 - ratio) * n_bank)   # bank_copies / real_copies
    best: Replication | None = None
    a = 1
    while True:
        b = max(1, round(a * wanted))
        size = a * n_real + b * n_bank
        if best is not None and size > max_len:
            break
        eff = b * n_bank / size
        if best is None or abs(eff - ratio) < abs(best.effective_ratio - ratio):
            best = Replication(a, b, eff)
        if abs(eff - ratio) < 1e-12:
            break
        a += 1
    return best


class MixedDataset:
    """Duck-types nnU-Net's dataset interface (`identifiers`, `load_case`) over a real and a bank dataset."""

    def __init__(self, real: Any, bank: Any | None, real_keys: Sequence[str], bank_keys: Sequence[str],
                 replication: Replication):
        clash = [k for k in real_keys if str(k).startswith(BANK_PREFIX)]
        if clash:
            raise ConfigError(f"real case ids may not start with {BANK_PREFIX!r}: {clash[:3]}")
        self.real = real
        self.bank = bank
        self.replication = replication
        self.real_keys = list(real_keys)
        self.bank_keys = list(bank_keys) if bank is not None else []
        ids = [k for k in self.real_keys for _ in range(replication.real_copies)]
        ids += [BANK_PREFIX + k for k in self.bank_keys for _ in range(replication.bank_copies)]
        if not ids:
            raise ConfigError("nothing to train on: no real training cases and no usable bank cases")
        # an array, not a list: np.random.choice would otherwise convert the list on every batch
        self.identifiers = np.asarray(ids)

    def load_case(self, identifier: str):
        identifier = str(identifier)
        if identifier.startswith(BANK_PREFIX):
            return self.bank.load_case(identifier[len(BANK_PREFIX):])
        return self.real.load_case(identifier)

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)

    def __len__(self) -> int:
        return len(self.real_keys) + len(self.bank_keys)


def count_synthetic(keys: Iterable[Any]) -> tuple[int, int]:
    """(bank draws, all draws) among a batch's keys."""
    keys = [str(k) for k in keys]
    return sum(k.startswith(BANK_PREFIX) for k in keys), len(keys)
