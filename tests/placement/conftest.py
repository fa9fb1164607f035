"""Placement fixtures: generated ellipsoid organs and the real CT's segmentation resampled to 1 mm."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_to_output

ABDOMEN_LABELS = (4, 5, 6)  # TotalSegmentator v2: gallbladder, liver, stomach


def ellipsoid(shape: tuple[int, int, int], centre, semi_axes) -> np.ndarray:
    """Bool ellipsoid with the given centre and semi-axes (voxels)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)) <= 1.0


@pytest.fixture(scope="session")
def make_ellipsoid():
    """The ellipsoid builder (a fixture: pytest's importlib mode makes test folders non-importable)."""
    return ellipsoid


@pytest.fixture(scope="session")
def solid_organ() -> np.ndarray:
    return ellipsoid((80, 70, 60), (40, 35, 30), (30, 25, 22))


@pytest.fixture(scope="session")
def hollow_organ() -> np.ndarray:
    """A TotalSegmentator-style hollow organ: the mask covers wall and lumen alike."""
    return ellipsoid((70, 60, 60), (35, 30, 30), (25, 20, 20))


@pytest.fixture(scope="session")
def real_seg_1mm(real_seg: Path) -> np.ndarray:
    """The real v2 segmentation around gallbladder/liver/stomach, resampled to 1 mm (nearest neighbour)."""
    img = nib.load(str(real_seg))
    data = np.asarray(img.dataobj)
    idx = np.nonzero(np.isin(data, ABDOMEN_LABELS))
    crop = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in idx)
    small = img.slicer[crop]
    return np.asarray(resample_to_output(small, voxel_sizes=(1.0, 1.0, 1.0), order=0).dataobj).astype(np.int16)
