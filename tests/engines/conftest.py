"""Engine fixtures: the real CT around the liver at 1 mm, a generated CT, and builders for cases and reports.

Helpers are handed out as fixtures because pytest runs with --import-mode=importlib (test folders are not
importable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.processing import resample_to_output
from scipy import ndimage

from ld_augment.engines.base import LesionContext
from ld_augment.reports import LesionReport

LIVER_V1 = 5
ABDOMEN_LABELS = (4, 5, 6)  # TotalSegmentator v2: gallbladder, liver, stomach


@dataclass
class Case:
    ct: np.ndarray  # float32 HU
    seg: np.ndarray  # int16 labels
    spacing: tuple[float, float, float]

    def context(self, label: int, organ_name: str, occupied: np.ndarray | None = None) -> LesionContext:
        organ = self.seg == label
        return LesionContext(ct=self.ct, organ_seg=self.seg, organ_mask=organ, organ_name=organ_name,
                             spacing=self.spacing, occupied=np.zeros_like(organ) if occupied is None else occupied)


def _make_report(organ_id: int = LIVER_V1, **values) -> LesionReport:
    """A report with typed values (the reports stage renders the original's texts); None drops a default."""
    defaults = {"shape": "round-like", "density": "hypodense lesion", "density_variations": "homogeneous",
                "surface_characteristics": "well-defined margin", "size": (16, 16, 16)}
    defaults.update(values)
    return LesionReport(organ_id=organ_id).with_values(**{k: v for k, v in defaults.items() if v is not None})


@pytest.fixture(scope="session")
def make_report() -> Callable[..., LesionReport]:
    return _make_report


@pytest.fixture(scope="session")
def make_case() -> type[Case]:
    return Case


@pytest.fixture(scope="session")
def real_case(real_ct: Path, real_seg: Path) -> Case:
    """The real CT crop around gallbladder/liver/stomach at 1 mm (linear for the CT, nearest for the labels)."""
    ct_img, seg_img = nib.load(str(real_ct)), nib.load(str(real_seg))
    seg = np.asarray(seg_img.dataobj)
    idx = np.nonzero(np.isin(seg, ABDOMEN_LABELS))
    crop = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in idx)
    ct = resample_to_output(ct_img.slicer[crop], voxel_sizes=(1.0, 1.0, 1.0), order=1)
    labels = resample_to_output(seg_img.slicer[crop], voxel_sizes=(1.0, 1.0, 1.0), order=0)
    return Case(np.asarray(ct.dataobj, dtype=np.float32), np.asarray(labels.dataobj).astype(np.int16), (1.0, 1.0, 1.0))


@pytest.fixture(scope="session")
def generated_case() -> Case:
    """An ellipsoid 'liver' (label 5, ~60 HU) in fat (-100 HU) with correlated noise, 1 x 1 x 1.5 mm voxels."""
    rng = np.random.default_rng(123)
    shape = (90, 80, 50)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (45, 40, 25), (38, 32, 21))) <= 1.0
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8) * 25.0
    ct = np.where(organ, 60.0, -100.0) + noise
    return Case(ct.astype(np.float32), organ.astype(np.int16) * LIVER_V1, (1.0, 1.0, 1.5))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tiny networks, restored afterwards (use via pytestmark)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
