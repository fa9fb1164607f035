"""Fabricated labelled datasets (tiny volumes, real affines) for the loaders and the comparison.

Loaded by file path (pytest runs with --import-mode=importlib) from tests/evaluation and tests/synthesis_bank."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (40, 40, 24)
SPACING = (1.5, 1.5, 2.5)


def _affine(spacing=SPACING) -> np.ndarray:
    return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like, as many scanners write


def write_case(root: Path, case: str, *, kind: str, rng: np.random.Generator, n_lesions: int = 2,
               spacing=SPACING) -> None:
    """One CT + label: organ (label 1, ~50 HU) holding `n_lesions` lesions (label 2) of `kind`:
    "ball" = hypodense blurred ball, "box" = axis-aligned hyperdense box with a sharp edge."""
    grid = np.indices(SHAPE).astype(float)
    centre = (np.asarray(SHAPE) - 1) / 2
    sp = np.asarray(spacing)
    r_mm = np.sqrt(sum(((g - c) * s / a) ** 2 for g, c, s, a in zip(grid, centre, sp, (26.0, 26.0, 26.0))))
    organ = r_mm <= 1.0
    ct = np.where(organ, 50.0, -100.0)
    lesion = np.zeros(SHAPE, bool)
    inner = np.argwhere(ndimage.binary_erosion(organ, iterations=5))
    for _ in range(n_lesions):
        c = inner[rng.integers(len(inner))]
        radius = rng.uniform(4.0, 7.0)
        if kind == "ball":
            one = np.sqrt(sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, sp))) <= radius
        else:
            one = np.all([np.abs((g - ci) * s) <= radius for g, ci, s in zip(grid, c, sp)], axis=0)
        lesion |= one & organ & ~lesion
    if kind == "ball":
        ct = np.where(lesion, 10.0, ct)
        ct = ndimage.gaussian_filter(ct, 0.8)
    else:
        ct = np.where(lesion, 140.0, ct)
    ct = ct + rng.normal(0, 6.0, SHAPE)
    label = np.where(lesion, 2, np.where(organ, 1, 0)).astype(np.uint8)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), _affine(spacing)), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    nib.save(nib.Nifti1Image(label, _affine(spacing)), str(root / "labelsTr" / f"{case}.nii.gz"))


def make_dataset(root: Path, *, kind: str = "ball", n_cases: int = 6, seed: int = 0, bank: bool = False,
                 lesion_name: str = "tumor", spacing=SPACING) -> Path:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n_cases):
        case = f"case_{i:03d}"
        write_case(root, case, kind=kind, rng=rng, spacing=spacing)
        names.append(case)
    labels = {"background": 0, "organ": 1, "lesion": 2} if bank else {"background": 0, "liver": 1, lesion_name: 2}
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "labels": labels, "numTraining": n_cases,
                                                   "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    if bank:
        lines = []
        for case in names:
            report = {"5": ["", "", {"density": "hypodense lesion,", "shape": "round-like,"}, [[[1, 2, 3]], [[4, 4, 4]]]]}
            lines.append(json.dumps({"case_id": case, "status": "ok", "organ": "liver",
                                     "lesion_type": "metastasis", "reports": report}))
        (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root
