"""CT standardization: canonical RAS orientation and a target spacing, with a correct affine.

The original LesionDiffusion zoomed arrays and kept the old affine (so the header lied about where voxels
are) and overwrote the user's file. Here every resampling goes through nibabel.processing, which derives the
output affine from the same mapping it interpolates with, inputs are never touched, and a `SourceGeometry`
records how to get back to the user's grid.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output, vox2out_vox

from ld_augment.errors import ConfigError, InputError
from ld_augment.settings import DEFAULT_MAX_MEMORY_GB, MAX_MEMORY_ENV, memory_limit_bytes  # noqa: F401 (re-exported)
from ld_augment.io.geometry import (  # noqa: F401  (re-exported: the write-back helpers live beside this)
    VoxelBox,
    as_voxel_box,
    region_affine,
    resample_region_to_source,
    source_region_for_std_box,
)
from ld_augment.io.nifti import ImageLike, describe, label_dtype, load_ct, sha256_file

__all__ = [
    "DEFAULT_SPACING", "SourceGeometry", "standardize_image", "standardize_ct", "resample_to_grid", "is_standard",
    "check_memory_budget", "estimate_standardize_bytes", "memory_limit_bytes",
    # write-back helpers, defined in geometry.py and re-exported so callers find them beside standardization
    "VoxelBox", "as_voxel_box", "region_affine", "resample_region_to_source", "source_region_for_std_box",
]

DEFAULT_SPACING = (1.0, 1.0, 1.0)
# Working copies: the stored voxels plus a float32 copy of the input and its reoriented copy (_voxels,
# as_closest_canonical), and two float32-sized volumes in the standardized grid: the interpolated CT itself
# (measured: one copy in standardize_image) plus what a case keeps beside it there (segmentation, organ and
# occupancy masks), so the budget is that of preprocessing a case, not of one call.
# benchmarks/bench_bank_guards.py prints the estimate against the traced peak of standardize_image.
_INPUT_FLOAT_COPIES = 2
_OUTPUT_FLOAT_COPIES = 2


@dataclass(frozen=True)
class SourceGeometry:
    """Where a standardized case came from: enough to write results back in the user's own grid."""

    path: str | None
    sha256: str | None
    affine: tuple[tuple[float, ...], ...]
    shape: tuple[int, int, int]
    dtype: str

    @property
    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=float)

    @classmethod
    def from_image(cls, path: str | os.PathLike | None, img: nib.spatialimages.SpatialImage) -> "SourceGeometry":
        """Geometry of `img`; hash and on-disk dtype are read from `path` when it is a file.

        The on-disk dtype matters (an int16 CT must be written back as int16), while `img` may already hold
        scaled float voxels.
        """
        sha, dtype = None, str(img.get_data_dtype())
        if path is not None and Path(path).is_file():
            sha = sha256_file(path)
            dtype = str(nib.load(str(path)).get_data_dtype())
        affine = tuple(tuple(float(v) for v in row) for row in np.asarray(img.affine, float))
        shape = tuple(int(n) for n in img.shape[:3])
        return cls(None if path is None else str(path), sha, affine, shape, dtype)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["affine"] = [list(row) for row in self.affine]
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SourceGeometry":
        expected = {"path", "sha256", "affine", "shape", "dtype"}
        unknown, missing = set(data) - expected, expected - set(data)
        if unknown or missing:
            raise ConfigError(
                f"source geometry: unknown keys {sorted(unknown)} / missing keys {sorted(missing)}; "
                f"expected {sorted(expected)}"
            )
        affine = np.asarray(data["affine"], dtype=float)
        if affine.shape != (4, 4):
            raise ConfigError(f"source geometry: affine must be 4x4, got shape {affine.shape}")
        shape = tuple(int(n) for n in data["shape"])
        if len(shape) != 3:
            raise ConfigError(f"source geometry: shape must have 3 entries, got {list(shape)}")
        return cls(
            data["path"],
            data["sha256"],
            tuple(tuple(float(v) for v in row) for row in affine),
            shape,  # type: ignore[arg-type]
            str(data["dtype"]),
        )


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def estimate_standardize_bytes(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float],
                               itemsize: int = 4) -> tuple[int, tuple[int, int, int]]:
    """(peak bytes of standardize_image, standardized shape) from the header alone (nothing is loaded).

    The output grid is nibabel's own (`vox2out_vox`, what resample_to_output uses): voxel count x 4 bytes x
    working copies, plus the input's stored voxels and their float32 copies.
    """
    target = _check_spacing(spacing)
    shape3 = tuple(int(n) for n in tuple(shape)[:3])
    if is_standard(nib.as_closest_canonical(nib.Nifti1Image(np.empty((1, 1, 1), np.uint8), affine)).affine, target):
        out_shape = shape3  # reorientation only: the same voxels
    else:
        out_shape = tuple(int(n) for n in vox2out_vox((shape3, np.asarray(affine, float)), target)[0])
    n_in, n_out = float(np.prod(shape3, dtype=float)), float(np.prod(out_shape, dtype=float))
    peak = n_in * (int(itemsize) + 4 * _INPUT_FLOAT_COPIES) + n_out * 4 * _OUTPUT_FLOAT_COPIES
    return int(peak), out_shape  # type: ignore[return-value]


def check_memory_budget(img: nib.spatialimages.SpatialImage, spacing: Sequence[float] = DEFAULT_SPACING, *,
                        name: str | None = None, limit_bytes: int | None = None) -> int:
    """Refuse (InputError naming the file) a volume whose standardization would exceed the memory budget.

    Header-only and instant, so a 15 mm-voxel file that would need tens of GB at 1 mm fails in milliseconds
    instead of after minutes of swapping. Returns the estimate in bytes.
    """
    limit = memory_limit_bytes() if limit_bytes is None else int(limit_bytes)
    itemsize = int(np.dtype(img.get_data_dtype()).itemsize)
    peak, out_shape = estimate_standardize_bytes(img.shape, np.asarray(img.affine, float), spacing, itemsize)
    if peak > limit:
        zooms = tuple(round(float(z), 3) for z in img.header.get_zooms()[:3])
        raise InputError(
            f"{name or describe(img)}: standardizing {tuple(int(n) for n in img.shape[:3])} voxels of {zooms} mm to "
            f"{tuple(float(s) for s in spacing)} mm gives {out_shape} voxels and needs about {peak / 2**30:.1f} GB, "
            f"over the limit of {limit / 2**30:.1f} GB; check the file's voxel size, choose a coarser spacing, or "
            f"raise {MAX_MEMORY_ENV}"
        )
    return peak


def _with_clean_header(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A Nifti1Image whose qform/sform both equal `affine` and whose stored dtype is the array's."""
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _voxels(img: nib.spatialimages.SpatialImage, is_label: bool, name: str) -> np.ndarray:
    """Voxels as float32 (intensities; int16 HU would be truncated by linear interpolation) or integers."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name} has shape {data.shape}; a 3D volume is required")
    if not is_label:
        return data.astype(np.float32)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError(f"{name} is not integer-valued; load it with load_label_map() first")
    hi = int(data.max()) if data.size else 0
    if float(data.min()) < 0:
        raise InputError(f"{name} has negative labels; labels must be >= 0")
    return data.astype(label_dtype(hi))


def is_standard(affine: np.ndarray, spacing: Sequence[float], atol: float = 1e-5) -> bool:
    """True when the affine is already axis-aligned RAS with exactly `spacing` (nothing to resample)."""
    rzs = np.asarray(affine, float)[:3, :3]
    return bool(np.allclose(rzs, np.diag(spacing), atol=atol))


def standardize_image(
    img: nib.spatialimages.SpatialImage,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    is_label: bool = False,
) -> nib.Nifti1Image:
    """Reorient to RAS and resample to `spacing` mm; returns a new image, the input is not modified.

    Intensities: order-1 interpolation, float32 out. Labels: nearest neighbour, integer dtype, label values
    preserved. The output grid spans the input's voxel centres (nibabel's `resample_to_output`), so every
    world point inside the input stays inside the output and keeps its meaning.
    """
    target = _check_spacing(spacing)
    name = describe(img)
    check_memory_budget(img, target, name=name)
    work = _with_clean_header(_voxels(img, is_label, name), np.asarray(img.affine, float))
    canonical = nib.as_closest_canonical(work)
    if is_standard(canonical.affine, target):
        data = np.array(canonical.dataobj, copy=True)
        return _with_clean_header(data, np.asarray(canonical.affine, float))
    out = resample_to_output(canonical, voxel_sizes=target, order=0 if is_label else 1, mode="nearest")
    data = np.asarray(out.dataobj)
    data = data.astype(work.get_data_dtype()) if is_label else data.astype(np.float32, copy=False)
    return _with_clean_header(data, np.asarray(out.affine, float))


def resample_to_grid(
    img: nib.spatialimages.SpatialImage,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    is_label: bool,
    cval: float = 0.0,
) -> nib.Nifti1Image:
    """Resample `img` onto the grid (shape, affine): e.g. a segmentation onto a standardized CT's grid.

    Points outside `img` get `cval` (0 = background for labels; pass e.g. -1024 for a CT).
    """
    name = describe(img)
    work = _with_clean_header(_voxels(img, is_label, name), np.asarray(img.affine, float))
    target_shape = tuple(int(n) for n in shape[:3])
    out = resample_from_to(work, (target_shape, np.asarray(affine, float)), order=0 if is_label else 1,
                           mode="constant", cval=cval)
    data = np.asarray(out.dataobj)
    data = data.astype(work.get_data_dtype()) if is_label else data.astype(np.float32, copy=False)
    return _with_clean_header(data, np.asarray(affine, float))


def standardize_ct(
    img_or_path: ImageLike, spacing: Sequence[float] = DEFAULT_SPACING
) -> tuple[nib.Nifti1Image, SourceGeometry]:
    """Validate (load_ct), standardize, and record the source geometry of a CT in one call."""
    if isinstance(img_or_path, (str, os.PathLike)) and Path(img_or_path).is_file():
        try:
            header_only = nib.load(str(img_or_path))
        except Exception:  # noqa: BLE001 - unreadable files get load_ct's precise message below
            header_only = None
        if header_only is not None and len(header_only.shape) >= 3:
            check_memory_budget(header_only, spacing, name=str(img_or_path))  # before the voxels are read
    img = load_ct(img_or_path)
    path = img_or_path if isinstance(img_or_path, (str, os.PathLike)) else img_or_path.get_filename()
    return standardize_image(img, spacing), SourceGeometry.from_image(path, img)
