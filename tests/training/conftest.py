"""Generated training cases (small ellipsoid organs with a lesion, real affine) written to tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

LIVER_V1 = 5
SPLEEN_V1 = 1
AFFINE = np.array([[1.0, 0, 0, -20.0], [0, 1.0, 0, -30.0], [0, 0, 1.0, 10.0], [0, 0, 0, 1]])


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def report_json(organ_id: int, centre, size) -> dict:
    return {str(organ_id): ["round-like,", "", {
        "enhancement status": "enhanced CT,", "lesion location": str(organ_id), "shape": "round-like,",
        "size": f"[[{size[0]} {size[1]} {size[2]}]] pixel", "density": "low density lesion,",
        "density variations": "homogeneous,",
        "CT value": "Mean density of the lesion region is approximately 20 HU,",
        "surface characteristics": "well-defined margin,",
        "relationship with adjacent organs": "no close relationship with surrounding organs,",
        "specific features": ""}, [[list(map(int, centre))], [list(map(int, size))]]]}


def write_case(folder: Path, *, seed: int = 0, shape=(40, 40, 40), with_ct: bool = True, lesion: bool = True,
               seg_name: str = "totalseg.nii.gz") -> Path:
    """One case: an ellipsoid liver (v1 id 5) with a spherical lesion, a spleen beside it, a body outline."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    c = np.array(shape) / 2
    body = _ellipsoid(shape, c, np.array(shape) * 0.48)
    liver = _ellipsoid(shape, c + [-3, 2, 0], [12, 10, 11])
    spleen = _ellipsoid(shape, c + [12, -8, 0], [4, 4, 6]) & ~liver
    centre = c + [-4 + seed % 3, 2, 1 - seed % 2]
    les = _ellipsoid(shape, centre, [4 + seed % 2, 3, 4]) & liver
    seg = np.zeros(shape, np.uint8)
    seg[spleen], seg[liver] = SPLEEN_V1, LIVER_V1
    label = np.zeros(shape, np.float32)  # float-stored like the LesionDiffusion demo labels
    label[liver] = 1
    if lesion:
        label[les] = 2
    nib.save(nib.Nifti1Image(label, AFFINE), str(folder / "label.nii.gz"))
    nib.save(nib.Nifti1Image(seg, AFFINE), str(folder / seg_name))
    if with_ct:
        ct = np.where(body, 0.0, -1000.0) + rng.normal(0, 10, shape)
        ct[liver] = 60 + rng.normal(0, 10, int(liver.sum()))
        ct[les & liver] = 20 if lesion else ct[les & liver]
        ct[_ellipsoid(shape, c + [0, -14, 0], [3, 3, 15])] = 400  # a spine, so the range looks like a CT
        nib.save(nib.Nifti1Image(ct.astype(np.int16), AFFINE), str(folder / "ct.nii.gz"))
    lo, hi = np.argwhere(les).min(0), np.argwhere(les).max(0) + 1
    (folder / "report.json").write_text(json.dumps(report_json(LIVER_V1, (lo + hi) // 2, hi - lo)))
    return folder


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    """Two generated cases with CT, label, totalseg and report."""
    root = tmp_path / "data"
    for i in range(2):
        write_case(root / f"case_{i}", seed=i)
    return root


@pytest.fixture
def real_cases_dir(shared_data: Path, tmp_path: Path) -> Path:
    """The two real LesionDiffusion annotations (label, totalseg_v1, report; no CT), in the shared layout."""
    src = shared_data / "lesions"
    if not src.is_dir():
        pytest.skip(f"real lesion annotations not found at {src}")
    root = tmp_path / "real"
    for case in sorted(p for p in src.iterdir() if p.is_dir()):
        shutil.copytree(case, root / case.name)
    return root


@pytest.fixture
def make_case():
    """write_case(folder, *, seed, shape, with_ct, lesion, seg_name) -> folder (importlib mode: no imports)."""
    return write_case


@pytest.fixture
def case_affine() -> np.ndarray:
    return AFFINE.copy()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny networks here run fastest on one thread; on a shared 2-core machine, 2 OpenMP threads spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
