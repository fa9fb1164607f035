"""Loading and validating the user's NIfTI files (CT volumes and label maps).

Every check here exists because a bad input otherwise fails much later with an obscure message (a 2D slice
breaks resampling, a NaN poisons the diffusion model, an MR image gets CT windows). Each error names the file
and the problem. Inputs are never modified: the returned image holds its own in-memory copy of the voxels.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from ld_augment.errors import InputError
from ld_augment.settings import MAX_MEMORY_ENV, memory_limit_bytes

ImageLike = Union[str, os.PathLike, nib.spatialimages.SpatialImage]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def strip_nifti_suffix(name: str) -> str | None:
    """`case_0000.nii.gz` -> `case_0000`; None when the name is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


#: No CT scanner images more than this (mm) across the patient (R, A) or along the body (S); a header claiming
#: more has a wrong voxel size, and resampling it to 1 mm would allocate tens of GB.
MAX_FIELD_OF_VIEW_MM = (1000.0, 1000.0, 2000.0)
#: Deflate never compresses better than 1032:1, so a .nii.gz whose voxels would need more than this many
#: times its size is truncated or lies about its shape (a 201-byte file claiming 4e9 voxels).
DEFLATE_MAX_RATIO = 1032

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


def _open(img_or_path: ImageLike, what: str, like: nib.spatialimages.SpatialImage | None = None,
          like_name: str | None = None) -> tuple[nib.spatialimages.SpatialImage, np.ndarray, str]:
    """Open a path (or take an image) and read its voxels, turning every failure into an InputError.

    The header is checked before a voxel is read (`check_header`): a file that declares more voxels than memory
    allows, than the file can hold, or another grid than `like` (the CT it accompanies) fails in milliseconds.
    """
    name = describe(img_or_path)
    if isinstance(img_or_path, (str, os.PathLike)):
        img = open_header(img_or_path, what, like=like, like_name=like_name)
        path = Path(img_or_path)
        try:
            data = np.asanyarray(img.dataobj)
        except MemoryError:
            raise InputError(f"{what} file {path}: not enough memory to read its {img.shape} voxels") from None
        except Exception as exc:  # nibabel raises many types (ImageFileError, gzip/zlib/EOF errors)
            raise InputError(f"{what} file {path} is not a readable NIfTI image: {_one_line(exc)}") from exc
    elif isinstance(img_or_path, nib.spatialimages.SpatialImage):
        img = img_or_path
        if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            check_header(img, name, what, like=like, like_name=like_name)
        data = np.asanyarray(img.dataobj)
    else:
        raise InputError(f"{what}: expected a path or a nibabel image, got {type(img_or_path).__name__}")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{what} {name} is a {type(img).__name__}, not a NIfTI image")
    return img, data, name


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def open_header(path: str | os.PathLike, what: str, like: nib.spatialimages.SpatialImage | None = None,
                like_name: str | None = None) -> nib.spatialimages.SpatialImage:
    """nibabel's lazy image of a NIfTI file after `check_header` (no voxel is read): the one way to open a
    user's file, so every input (CT, segmentation, label map, avoid map) gets the same size checks."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{what} path {path} is not a file")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"{what} file {path} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, gzip/zlib/EOF errors)
        raise InputError(f"{what} file {path} is not a readable NIfTI image: {_one_line(exc)}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{what} {path} is a {type(img).__name__}, not a NIfTI image")
    check_header(img, str(path), what, path=path, like=like, like_name=like_name)
    return img


def _in_memory_itemsize(img: nib.spatialimages.SpatialImage) -> int:
    """Bytes per voxel once read: scaled integers (scl_slope/scl_inter) come back as floats."""
    dtype = np.dtype(img.get_data_dtype())
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = (np.isfinite(slope) and slope not in (0.0, 1.0)) or (np.isfinite(inter) and inter != 0.0)
    return max(dtype.itemsize, 8) if scaled and dtype.kind in "iub" else dtype.itemsize


def field_of_view_mm(shape, affine: np.ndarray) -> tuple[float, float, float]:
    """World extent (R, A, S, mm) of a voxel grid: the box its voxels cover, whatever the storage order."""
    dims = np.asarray([int(n) for n in tuple(shape)[:3]], float)
    return tuple(float(v) for v in np.abs(np.asarray(affine, float)[:3, :3]) @ dims)  # type: ignore[return-value]


def check_header(img: nib.spatialimages.SpatialImage, name: str, what: str, *, path: Path | None = None,
                 like: nib.spatialimages.SpatialImage | None = None, like_name: str | None = None) -> None:
    """Refuse, from the header alone, what would only fail after allocating its voxels.

    * memory: shape x bytes per voxel over $LD_AUGMENT_MAX_MEMORY_GB;
    * the file: fewer bytes on disk than the declared voxels (for .nii.gz: than 1/1032 of them);
    * plausibility: a grid covering more than MAX_FIELD_OF_VIEW_MM (no scanner does; the voxel size is wrong);
    * `like`: a segmentation/label map on another grid than the CT it accompanies.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        return  # _as_3d names a 2D image after the (small) read
    who = name if what == name else f"{what} {name}"  # callers often name a file by its path
    voxels = math.prod(shape)
    dtype = np.dtype(img.get_data_dtype())
    need = voxels * _in_memory_itemsize(img)
    limit = memory_limit_bytes()
    if need > limit:
        raise InputError(
            f"{who}: its header declares {shape} voxels of {dtype.name}, {need / 2**30:.1f} GB in memory, "
            f"over the limit of {limit / 2**30:.1f} GB; the file's header is wrong, or raise {MAX_MEMORY_ENV}")
    if path is not None:
        on_disk = path.stat().st_size
        stored = int(getattr(img.header, "get_data_offset", lambda: 0)() or 0) + voxels * dtype.itemsize
        gz = path.name.lower().endswith(".gz")
        if (on_disk * DEFLATE_MAX_RATIO if gz else on_disk) < stored:
            held = f"a {on_disk}-byte {'gzip ' if gz else ''}file cannot hold them"
            raise InputError(f"{who}: its header declares {shape} voxels of {dtype.name} "
                             f"({stored} bytes) but {held}: the file is truncated or its header is wrong")
    affine = np.asarray(img.affine, float)
    if np.all(np.isfinite(affine)):
        fov = field_of_view_mm(shape, affine)
        if any(f > m for f, m in zip(fov, MAX_FIELD_OF_VIEW_MM)):
            zooms = tuple(round(float(z), 3) for z in img.header.get_zooms()[:3])
            raise InputError(
                f"{who}: {shape[:3]} voxels of {zooms} mm span {fov[0]:.0f} x {fov[1]:.0f} x {fov[2]:.0f} mm "
                f"(R x A x S); no CT covers more than {MAX_FIELD_OF_VIEW_MM[0]:.0f} mm across the body or "
                f"{MAX_FIELD_OF_VIEW_MM[2]:.0f} mm along it: check the voxel size in the file's header")
    if like is not None:
        check_same_grid(like, img, name_a=like_name or describe(like), name_b=name)


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


def load_label_map(img_or_path: ImageLike, *, name: str = "segmentation",
                   like: nib.spatialimages.SpatialImage | None = None, like_name: str | None = None) -> nib.Nifti1Image:
    """Load and validate a label map (3D, finite, integer-valued, non-negative) as an integer-typed image.

    Float-stored label maps (common: the LesionDiffusion demo labels are float32) are accepted when every
    value is a whole number, and converted to the smallest fitting integer type. `like` (the CT it belongs to)
    is compared with the header before any voxel is read: a map on another grid never allocates.
    """
    img, data, label = _open(img_or_path, name, like=like, like_name=like_name)
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
    who_a, who_b = _named(name_a, img_a), _named(name_b, img_b)
    if shape_a != shape_b:
        raise InputError(
            f"{who_a} and {who_b} have different shapes "
            f"{shape_a} and {shape_b}; they must be on the same voxel grid"
        )
    diff = float(np.max(np.abs(np.asarray(img_a.affine, float) - np.asarray(img_b.affine, float))))
    if not diff <= atol:
        raise InputError(
            f"{who_a} and {who_b} have different affines "
            f"(max difference {diff:.4g} > {atol:g}; {name_a}: {_grid_words(img_a.affine)}; "
            f"{name_b}: {_grid_words(img_b.affine)}); they must be on the same voxel grid"
        )


def _named(name: str, img: nib.spatialimages.SpatialImage) -> str:
    """'CT (/data/ct.nii.gz)', or just the name when the file adds nothing (same path, in-memory image)."""
    where = describe(img)
    return name if where in (name, "<in-memory image>") else f"{name} ({where})"


def _grid_words(affine: np.ndarray) -> str:
    """'spacing (0.8, 0.8, 2.5) mm, origin (-200.0, -180.0, 30.0) mm': an affine in one line of a message."""
    a = np.asarray(affine, float)
    spacing = tuple(round(float(v), 4) for v in np.linalg.norm(a[:3, :3], axis=0))
    origin = tuple(round(float(v), 2) for v in a[:3, 3])
    axes = "".join(nib.aff2axcodes(a))
    return f"orientation {axes}, spacing {spacing} mm, origin {origin} mm"
