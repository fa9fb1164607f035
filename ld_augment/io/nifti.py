"""Loading and validating the user's NIfTI files (CT volumes and label maps).

Every check here exists because a bad input otherwise fails much later with an obscure message (a 2D slice
breaks resampling, a NaN poisons the diffusion model, an MR image gets CT windows). Each error names the file
and the problem. Inputs are never modified: the returned image holds its own in-memory copy of the voxels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from ld_augment.errors import InputError

ImageLike = Union[str, os.PathLike, nib.spatialimages.SpatialImage]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def strip_nifti_suffix(name: str) -> str | None:
    """`case_0000.nii.gz` -> `case_0000`; None when the name is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


# An abdominal CT in Hounsfield units always holds air (about -1000) and soft tissue/bone (> 100).
CT_MAX_AT_LEAST = 100.0
CT_MIN_AT_MOST = -500.0


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (CT volumes can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(img_or_path: ImageLike) -> str:
    """A name for messages: the path, the image's file name, or '<in-memory image>'."""
    if isinstance(img_or_path, (str, os.PathLike)):
        return str(img_or_path)
    filename = img_or_path.get_filename() if hasattr(img_or_path, "get_filename") else None
    return str(filename) if filename else "<in-memory image>"


def _open(img_or_path: ImageLike, what: str) -> tuple[nib.spatialimages.SpatialImage, np.ndarray, str]:
    """Open a path (or take an image) and read its voxels, turning every failure into an InputError."""
    name = describe(img_or_path)
    if isinstance(img_or_path, (str, os.PathLike)):
        path = Path(img_or_path)
        if not path.exists():
            raise InputError(f"{what} file {path} does not exist")
        if not path.is_file():
            raise InputError(f"{what} path {path} is not a file")
        if not path.name.lower().endswith(NIFTI_SUFFIXES):
            raise InputError(f"{what} file {path} is not a NIfTI file (expected a .nii or .nii.gz name)")
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types (ImageFileError, gzip/zlib/EOF errors)
            raise InputError(f"{what} file {path} is not a readable NIfTI image: {exc}") from exc
    elif isinstance(img_or_path, nib.spatialimages.SpatialImage):
        img = img_or_path
        data = np.asanyarray(img.dataobj)
    else:
        raise InputError(f"{what}: expected a path or a nibabel image, got {type(img_or_path).__name__}")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{what} {name} is a {type(img).__name__}, not a NIfTI image")
    return img, data, name


def _as_3d(data: np.ndarray, name: str, what: str) -> np.ndarray:
    """Squeeze singleton dimensions beyond the third; reject 2D images and true time series."""
    shape = data.shape
    if data.ndim > 3:
        extra = shape[3:]
        if any(n != 1 for n in extra):
            raise InputError(
                f"{what} {name} has shape {shape}: a 4D image with {int(np.prod(extra))} volumes; "
                "give a single 3D volume"
            )
        data = data.reshape(shape[:3])
    if data.ndim < 3 or min(data.shape) < 2:
        raise InputError(f"{what} {name} has shape {shape}: a 2D image; a 3D volume is required")
    return data


def _raw_zooms(path: Path) -> tuple[float, ...] | None:
    """pixdim[1:4] exactly as stored: nibabel's loader silently turns 0 into 1 and negatives into abs."""
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            header = nib.Nifti1Header.from_fileobj(fh, check=False)
        return tuple(float(z) for z in header["pixdim"][1:4])
    except Exception:  # NIfTI-2 or unusual files: the loaded header's zooms are checked instead
        return None


def _check_geometry(
    img: nib.spatialimages.SpatialImage, name: str, what: str, raw_zooms: tuple[float, ...] | None = None
) -> None:
    """Spacing must be positive and finite both in the header zooms and in the affine actually used."""
    zooms = raw_zooms or tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = np.asarray(img.affine, dtype=float)
    columns = np.linalg.norm(affine[:3, :3], axis=0)
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"{what} {name} has invalid voxel spacing {zooms} (must be positive and finite)")
    if not np.all(np.isfinite(affine)) or not np.all(columns > 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{what} {name} has a degenerate affine (voxel spacing {tuple(columns.round(4))}):\n{affine}")


def _stored_zooms(img_or_path: ImageLike, img: nib.spatialimages.SpatialImage) -> tuple[float, ...] | None:
    if isinstance(img_or_path, (str, os.PathLike)) and isinstance(img, nib.Nifti1Image):
        return _raw_zooms(Path(img_or_path))
    return None


def _rebuild(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> nib.Nifti1Image:
    """A Nifti1Image over `data` with the input's affine and header codes (own copy, consistent dtype)."""
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    out = nib.Nifti1Image(data, img.affine, header)
    out.set_data_dtype(data.dtype)
    if header is not None:
        out.set_qform(img.get_qform(), code=int(img.header["qform_code"]) or 1)
        out.set_sform(img.affine, code=int(img.header["sform_code"]) or 1)
    return out


def load_ct(img_or_path: ImageLike, *, name: str = "CT") -> nib.Nifti1Image:
    """Load and validate a CT volume in Hounsfield units; return a 3D Nifti1Image with its own voxel copy.

    Rejects (InputError naming the file): missing file, not NIfTI/unreadable, 2D, 4D with more than one volume,
    non-positive or non-finite spacing, NaN/inf voxels, and intensities that cannot be CT in HU
    (max < 100 or min > -500, e.g. an MR image or a normalized array).
    """
    img, data, label = _open(img_or_path, name)
    data = _as_3d(data, label, name)
    _check_geometry(img, label, name, _stored_zooms(img_or_path, img))
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{name} {label} has non-numeric voxel type {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{name} {label} has {bad} NaN/inf voxels; a CT must be finite everywhere")
    lo, hi = float(data.min()), float(data.max())
    if hi < CT_MAX_AT_LEAST or lo > CT_MIN_AT_MOST:
        raise InputError(
            f"{name} {label} does not look like a CT in Hounsfield units: intensity range [{lo:g}, {hi:g}] "
            f"(a CT has air near -1000 HU, so min <= {CT_MIN_AT_MOST:g}, "
            f"and tissue/bone, so max >= {CT_MAX_AT_LEAST:g})"
        )
    return _rebuild(img, np.array(data, copy=True))


def label_dtype(max_label: int) -> np.dtype:
    """Smallest unsigned/signed integer type nnU-Net and TotalSegmentator both read for these labels."""
    if max_label <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_label <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def load_label_map(img_or_path: ImageLike, *, name: str = "segmentation") -> nib.Nifti1Image:
    """Load and validate a label map (3D, finite, integer-valued, non-negative) as an integer-typed image.

    Float-stored label maps (common: the LesionDiffusion demo labels are float32) are accepted when every
    value is a whole number, and converted to the smallest fitting integer type.
    """
    img, data, label = _open(img_or_path, name)
    data = _as_3d(data, label, name)
    _check_geometry(img, label, name, _stored_zooms(img_or_path, img))
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{name} {label} has non-numeric voxel type {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError(f"{name} {label} has NaN/inf voxels; a label map must hold whole numbers")
        fractional = data != np.round(data)
        if fractional.any():
            example = float(data[fractional][0])
            raise InputError(
                f"{name} {label} is not a label map: {int(fractional.sum())} voxels are not whole numbers "
                f"(e.g. {example:g}); give an integer segmentation"
            )
    lo = float(data.min())
    if lo < 0:
        raise InputError(f"{name} {label} has negative labels (min {lo:g}); labels must be >= 0")
    hi = int(data.max())
    return _rebuild(img, data.astype(label_dtype(hi)))


def check_same_grid(
    img_a: nib.spatialimages.SpatialImage,
    img_b: nib.spatialimages.SpatialImage,
    *,
    name_a: str = "image",
    name_b: str = "segmentation",
    atol: float = 1e-3,
) -> None:
    """Raise InputError unless both images share the 3D shape and (within `atol` mm) the affine.

    A segmentation on another grid would put the organ, and so the lesion, in the wrong place silently.
    """
    shape_a, shape_b = tuple(img_a.shape[:3]), tuple(img_b.shape[:3])
    if shape_a != shape_b:
        raise InputError(
            f"{name_a} ({describe(img_a)}) and {name_b} ({describe(img_b)}) have different shapes "
            f"{shape_a} and {shape_b}; they must be on the same voxel grid"
        )
    diff = float(np.max(np.abs(np.asarray(img_a.affine, float) - np.asarray(img_b.affine, float))))
    if not diff <= atol:
        raise InputError(
            f"{name_a} ({describe(img_a)}) and {name_b} ({describe(img_b)}) have different affines "
            f"(max difference {diff:.4g} > {atol:g}); they must be on the same voxel grid.\n"
            f"{name_a} affine:\n{np.asarray(img_a.affine).round(4)}\n"
            f"{name_b} affine:\n{np.asarray(img_b.affine).round(4)}"
        )
