"""Real-CT fixtures for the pipeline: the 3 mm crop as shipped, reoriented to LPS, and resampled anisotropic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _flip_to_lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels seen from LPS: flip the first two axes and fix the affine so world coords stay put."""
    data = np.asarray(img.dataobj)[::-1, ::-1, :].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    flip[1, 3] = img.shape[1] - 1
    out = nib.Nifti1Image(data, img.affine @ flip)
    out.set_data_dtype(img.get_data_dtype())
    return out


def _anisotropic(img: nib.Nifti1Image, zooms: tuple[float, float, float], label: bool) -> nib.Nifti1Image:
    res = nibabel.processing.resample_to_output(img, zooms, order=0 if label else 1)
    data = np.asarray(res.dataobj)
    data = np.rint(data).astype(np.uint8 if label else np.int16)
    out = nib.Nifti1Image(data, res.affine)
    out.set_data_dtype(data.dtype)
    return out


@pytest.fixture(scope="session")
def ct_variants(real_ct: Path, real_seg: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (ct path, seg path): "ras" (the shipped crop), "lps", and "aniso" (2 x 2.5 x 4 mm)."""
    root = tmp_path_factory.mktemp("ct_variants")
    ct, seg = nib.load(str(real_ct)), nib.load(str(real_seg))
    out = {"ras": (real_ct, real_seg)}
    for name, make in (("lps", lambda i, lab: _flip_to_lps(i)),
                       ("aniso", lambda i, lab: _anisotropic(i, (2.0, 2.5, 4.0), lab))):
        paths = []
        for kind, img, lab in (("ct", ct, False), ("seg", seg, True)):
            path = root / f"{name}_{kind}.nii.gz"
            nib.save(make(img, lab), str(path))
            paths.append(path)
        out[name] = (paths[0], paths[1])
    return out
