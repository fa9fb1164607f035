"""Sampling logic of the mixed training dataset, through nnU-Net's own nnUNetDataLoader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ld_augment.errors import ConfigError
from nnunet_trainers.mixing import BANK_PREFIX, MixedDataset, count_synthetic, two_stage_probabilities


@pytest.mark.parametrize("n_real,n_bank,ratio", [(4, 5, 0.5), (100, 500, 0.25), (7, 3, 0.75), (13, 977, 0.1),
                                                  (1000, 37, 0.5), (97, 29989, 0.3), (100, 30000, 0.25)])
def test_two_stage_probabilities_are_exact(n_real, n_bank, ratio):
    p = two_stage_probabilities(n_real, n_bank, ratio)
    assert p.shape == (n_real + n_bank,) and p.sum() == pytest.approx(1.0)
    assert p[n_real:].sum() == pytest.approx(ratio, abs=1e-12)             # bank vs real: exactly the ratio
    assert np.ptp(p[:n_real]) < 1e-15 and np.ptp(p[n_real:]) < 1e-15      # uniform within each group


def _fraction_drawn(ds: MixedDataset, draws: int, seed: int) -> float:
    """What nnUNetDataLoader.get_indices does (np.random.choice with the probabilities), many times over."""
    np.random.seed(seed)
    keys = np.random.choice(ds.identifiers, draws, replace=True, p=ds.sampling_probabilities)
    return count_synthetic(keys)[0] / draws


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_30k_bank_gives_the_requested_ratio(ratio):
    """A 30,000-case bank beside 120 real cases: the realized fraction is within 0.005 of the ratio (the old
    replicated identifier list, capped at 20,000, gave 0.995 bank at 0.25)."""
    real, bank = [f"real_{i:03d}" for i in range(120)], [f"ld_{i:05d}" for i in range(30000)]
    ds = MixedDataset(object(), object(), real, bank, ratio)
    assert len(ds.identifiers) == 30120 and ds.ratio == pytest.approx(ratio)
    assert abs(_fraction_drawn(ds, 200_000, seed=1) - ratio) < 0.005


def test_two_stage_extremes_and_empty_groups():
    assert two_stage_probabilities(10, 0, 0.5)[:10].sum() == pytest.approx(1.0)      # no bank: real only
    assert two_stage_probabilities(0, 10, 1.0).sum() == pytest.approx(1.0)
    assert two_stage_probabilities(10, 10, 0.0)[10:].sum() == 0.0
    with pytest.raises(ConfigError, match="needs real training cases"):
        MixedDataset(object(), object(), [], ["x"], 0.5)
    with pytest.raises(ConfigError, match="outside"):
        two_stage_probabilities(3, 3, 1.5)


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
    ds = MixedDataset(real, bank, ["a", "b"], ["x"], 0.5)
    assert list(ds.identifiers) == ["a", "b", BANK_PREFIX + "x"]
    assert ds.load_case(BANK_PREFIX + "x")[0].max() == 1.0 and bank.loaded == ["x"]
    assert ds["a"][0].max() == 0.0 and real.loaded == ["a"]
    with pytest.raises(ConfigError, match="may not start"):
        MixedDataset(real, bank, [BANK_PREFIX + "a"], ["x"], 0.5)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_nnunet_loader_realizes_ratio(ratio):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    real_keys, bank_keys = [f"r{i}" for i in range(7)], [f"b{i}" for i in range(23)]
    ds = MixedDataset(_FakeDataset(0.0), _FakeDataset(1.0), real_keys, bank_keys, ratio)
    lm = LabelManager({"background": 0, "organ": 1, "lesion": 2}, regions_class_order=None)
    dl = nnUNetDataLoader(ds, 4, (8, 8, 8), (8, 8, 8), lm, oversample_foreground_percent=0.33,
                          sampling_probabilities=ds.sampling_probabilities)
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
