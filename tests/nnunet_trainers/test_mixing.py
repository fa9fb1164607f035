"""Sampling logic of the mixed training dataset, through nnU-Net's own nnUNetDataLoader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ld_augment.errors import ConfigError
from nnunet_trainers.mixing import BANK_PREFIX, MixedDataset, count_synthetic, replication_for


@pytest.mark.parametrize("n_real,n_bank,ratio", [(4, 5, 0.5), (100, 500, 0.25), (7, 3, 0.75), (13, 977, 0.1),
                                                  (1000, 37, 0.5), (3, 3, 0.333)])
def test_replication_matches_ratio(n_real, n_bank, ratio):
    rep = replication_for(n_real, n_bank, ratio)
    size = rep.real_copies * n_real + rep.bank_copies * n_bank
    assert rep.effective_ratio == pytest.approx(rep.bank_copies * n_bank / size)
    assert abs(rep.effective_ratio - ratio) < 2e-3
    assert size <= 20000 or rep.real_copies == 1


@pytest.mark.parametrize("ratio,expected", [(0.0, 0.0), (1.0, 1.0)])
def test_replication_extremes(ratio, expected):
    rep = replication_for(10, 10, ratio)
    assert rep.effective_ratio == expected
    assert (rep.bank_copies == 0) == (ratio == 0.0) and (rep.real_copies == 0) == (ratio == 1.0)


class _FakeDataset:
    """In-memory stand-in for an nnU-Net dataset: a cube with the source name baked into the intensities."""

    def __init__(self, value: float):
        self.value = value
        self.loaded: list[str] = []

    def load_case(self, identifier):
        self.loaded.append(identifier)
        data = np.full((1, 12, 12, 12), self.value, dtype=np.float32)
        seg = np.zeros((1, 12, 12, 12), dtype=np.int16)
        seg[0, 4:8, 4:8, 4:8] = 1
        locs = np.argwhere(seg > 0)
        return data, seg, None, {"class_locations": {1: locs, 2: locs[:0]}}


def test_mixed_dataset_routes_keys():
    real, bank = _FakeDataset(0.0), _FakeDataset(1.0)
    ds = MixedDataset(real, bank, ["a", "b"], ["x"], replication_for(2, 1, 0.5))
    assert sorted(set(ds.identifiers)) == ["a", "b", BANK_PREFIX + "x"]
    assert ds.load_case(BANK_PREFIX + "x")[0].max() == 1.0 and bank.loaded == ["x"]
    assert ds["a"][0].max() == 0.0 and real.loaded == ["a"]
    with pytest.raises(ConfigError, match="may not start"):
        MixedDataset(real, bank, [BANK_PREFIX + "a"], ["x"], replication_for(1, 1, 0.5))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_nnunet_loader_realizes_ratio(ratio):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    real_keys, bank_keys = [f"r{i}" for i in range(7)], [f"b{i}" for i in range(23)]
    ds = MixedDataset(_FakeDataset(0.0), _FakeDataset(1.0), real_keys, bank_keys,
                      replication_for(len(real_keys), len(bank_keys), ratio))
    lm = LabelManager({"background": 0, "organ": 1, "lesion": 2}, regions_class_order=None)
    dl = nnUNetDataLoader(ds, 4, (8, 8, 8), (8, 8, 8), lm, oversample_foreground_percent=0.33)
    np.random.seed(0)
    synthetic = total = 0
    for _ in range(300):
        batch = next(dl)
        s, t = count_synthetic(batch["keys"])
        # the key says bank exactly when the sample's intensities came from the bank dataset
        assert s == int(batch["data"].amax(dim=(1, 2, 3, 4)).sum().item())
        synthetic, total = synthetic + s, total + t
    assert total == 1200
    assert abs(synthetic / total - ratio) < 4 * math.sqrt(ratio * (1 - ratio) / total)


def test_count_synthetic():
    assert count_synthetic(np.array([BANK_PREFIX + "a", "b", "c"])) == (1, 3)
    assert count_synthetic([]) == (0, 0)
