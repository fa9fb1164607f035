"""How bank and real cases are mixed, as plain data structures (no nnU-Net import, so it is testable alone).

Two-stage sampling: a training sample is a bank case with probability `ratio`, otherwise a real case, and within
each group every case is equally likely. nnU-Net's `nnUNetDataLoader` draws its keys with
`np.random.choice(identifiers, p=sampling_probabilities)`; `MixedDataset.sampling_probabilities` is exactly that
two-stage distribution over the identifier list (real keys, then prefixed bank keys, each once), so the ratio is
exact for any bank size, and the loader's foreground oversampling and augmentation still apply to every drawn
case. The trainer hands these probabilities to nnU-Net's own loader. Bank keys carry a prefix, so the batch's
`keys` say what was drawn.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ld_augment.errors import ConfigError

BANK_PREFIX = "ldbank__"


def two_stage_probabilities(n_real: int, n_bank: int, ratio: float) -> np.ndarray:
    """p over [real..., bank...]: (1 - ratio) / n_real for each real key, ratio / n_bank for each bank key."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"bank ratio {ratio} is outside [0, 1]")
    if n_bank == 0:
        ratio = 0.0
    elif n_real == 0:
        ratio = 1.0
    p = np.empty(n_real + n_bank, dtype=np.float64)
    if n_real:
        p[:n_real] = (1.0 - ratio) / n_real
    if n_bank:
        p[n_real:] = ratio / n_bank
    return p / p.sum()


class MixedDataset:
    """Duck-types nnU-Net's dataset interface (`identifiers`, `load_case`) over a real and a bank dataset."""

    def __init__(self, real: Any, bank: Any | None, real_keys: Sequence[str], bank_keys: Sequence[str],
                 ratio: float):
        clash = [k for k in real_keys if str(k).startswith(BANK_PREFIX)]
        if clash:
            raise ConfigError(f"real case ids may not start with {BANK_PREFIX!r}: {clash[:3]}")
        self.real = real
        self.bank = bank
        self.real_keys = list(real_keys)
        self.bank_keys = list(bank_keys) if bank is not None else []
        ids = self.real_keys + [BANK_PREFIX + k for k in self.bank_keys]
        if not ids:
            raise ConfigError("nothing to train on: no real training cases and no usable bank cases")
        if ratio < 1.0 and not self.real_keys and self.bank_keys:
            raise ConfigError(f"bank ratio {ratio} needs real training cases, but this fold has none")
        # an array, not a list: np.random.choice would otherwise convert the list on every batch
        self.identifiers = np.asarray(ids)
        self.sampling_probabilities = two_stage_probabilities(len(self.real_keys), len(self.bank_keys), ratio)
        self.ratio = float(self.sampling_probabilities[len(self.real_keys):].sum())

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
