"""Issue 12 case 5: the memory estimate before resampling refuses absurd voxel sizes in milliseconds, matches
nibabel's output grid, and bounds what standardize_image really allocates."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.standardize import (
    MAX_MEMORY_ENV, check_memory_budget, estimate_standardize_bytes, memory_limit_bytes, standardize_ct,
    standardize_image,
)

OBLIQUE = np.array([[0.0, -0.8, 0.05, 5.0], [0.7, 0.0, 0.1, 2.0], [0.0, 0.02, -3.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def _ct(shape, zooms) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = np.full(shape, -1000, np.int16)
    data[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 40
    data[tuple(slice(n // 2 - 2, n // 2 + 2) for n in shape)] = 400  # bone: load_ct wants a real HU range
    return data + rng.integers(0, 20, shape, dtype=np.int16)


@pytest.fixture
def coarse_file(tmp_path: Path) -> Path:
    """The issue's file: small on disk (about 0.5 MB) but 15 mm voxels, so 1 mm needs over 20 GB."""
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(_ct((100, 100, 100), 15), np.diag([15.0, 15.0, 15.0, 1.0])), str(path))
    return path


def test_coarse_file_is_refused_in_seconds(coarse_file, monkeypatch):
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        standardize_ct(coarse_file)
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert str(coarse_file) in message and "(15.0, 15.0, 15.0) mm" in message and MAX_MEMORY_ENV in message
    assert "over the limit of 16.0 GB" in message


def test_preprocess_refuses_before_totalsegmentator(coarse_file, tmp_path, monkeypatch):
    from ld_augment.pipeline import preprocess_case

    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="needs about|no CT covers"):  # the field of view (issue 22) or memory
        preprocess_case(str(coarse_file), tmp_path / "case", organ="liver", lesion_type="liver cyst")  # no seg
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "case").exists()


@pytest.mark.parametrize("affine", [np.diag([1.5, 1.5, 2.5, 1.0]), OBLIQUE, np.diag([-1.0, 1.0, 1.0, 1.0])])
def test_estimated_shape_is_the_real_one(affine):
    img = nib.Nifti1Image(_ct((30, 40, 20), 1), affine)
    _, shape = estimate_standardize_bytes(img.shape, affine, (1.0, 1.0, 1.0), 2)
    assert shape == standardize_image(img, (1.0, 1.0, 1.0)).shape


@pytest.mark.parametrize("affine", [np.diag([1.5, 1.5, 2.5, 1.0]), OBLIQUE])
def test_estimate_bounds_the_measured_peak(affine):
    img = nib.Nifti1Image(_ct((60, 60, 40), 1), affine)
    estimate, _ = estimate_standardize_bytes(img.shape, affine, (1.0, 1.0, 1.0), 2)
    tracemalloc.start()
    try:
        standardize_image(img, (1.0, 1.0, 1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 4 * peak  # a bound, not a wild over-estimate


def test_limit_is_configurable(monkeypatch):
    img = nib.Nifti1Image(_ct((64, 64, 64), 1), np.eye(4))
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.001")
    with pytest.raises(InputError, match="over the limit of 0.0 GB"):
        standardize_image(img)
    monkeypatch.setenv(MAX_MEMORY_ENV, "2")
    assert memory_limit_bytes() == 2 * 2**30
    assert check_memory_budget(img) > 0
    monkeypatch.setenv(MAX_MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_MEMORY_ENV):
        memory_limit_bytes()
