"""Mapping between the standardized grid and the user's source grid, one neighbourhood at a time.

Synthesis happens in the standardized space (RAS, 1 mm), but results are written back into the user's own
grid. Resampling the whole volume back would blur every voxel of the CT; instead a lesion's box is mapped
through the two affines to a small source-grid region, and only that region is resampled and replaced.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class VoxelBox:
    """A half-open voxel box [start, stop) along the three array axes."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def is_empty(self) -> bool:
        return any(n == 0 for n in self.shape)

    def to_dict(self) -> dict[str, list[int]]:
        return {"start": list(self.start), "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VoxelBox":
        return cls(tuple(int(v) for v in data["start"]), tuple(int(v) for v in data["stop"]))  # type: ignore[arg-type]


def as_voxel_box(box: Any) -> VoxelBox:
    """Accept a VoxelBox, any object with `.start`/`.stop`, or a (start, stop) pair."""
    if isinstance(box, VoxelBox):
        return box
    if hasattr(box, "start") and hasattr(box, "stop"):
        start, stop = box.start, box.stop
    else:
        start, stop = box
    return VoxelBox(tuple(int(v) for v in start), tuple(int(v) for v in stop))  # type: ignore[arg-type]


def box_corners_world(box: VoxelBox, affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of the 8 outer corners of a box: voxel edges sit half a voxel off the centres."""
    lo = np.asarray(box.start, float) - 0.5
    hi = np.asarray(box.stop, float) - 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    return corners @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]


def source_region_for_std_box(
    box: Any,
    std_affine: np.ndarray,
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    *,
    pad: int = 2,
) -> VoxelBox:
    """The source-grid voxel box covering a standardized-grid box, padded by `pad` voxels and clipped.

    The padding leaves room for interpolation kernels and for a smooth blend at the region's border.
    The result may be empty when the box lies outside the source volume.
    """
    std_box = as_voxel_box(box)
    world = box_corners_world(std_box, std_affine)
    inv = np.linalg.inv(np.asarray(source_affine, float))
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    start = np.floor(vox.min(axis=0) + 0.5).astype(int) - pad
    stop = np.ceil(vox.max(axis=0) + 0.5).astype(int) + pad
    shape = np.asarray(source_shape[:3], int)
    start = np.clip(start, 0, shape)
    stop = np.clip(stop, start, shape)
    return VoxelBox(tuple(int(v) for v in start), tuple(int(v) for v in stop))  # type: ignore[arg-type]


def region_affine(affine: np.ndarray, region: VoxelBox) -> np.ndarray:
    """Affine of the sub-grid starting at `region.start` (same spacing and orientation)."""
    shift = np.eye(4)
    shift[:3, 3] = region.start
    return np.asarray(affine, float) @ shift


def resample_region_to_source(
    std_array: np.ndarray,
    std_affine: np.ndarray,
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    region: Any,
    *,
    order: int,
    cval: float = 0.0,
    mode: str = "nearest",
) -> np.ndarray:
    """Resample standardized-space data onto the source-grid voxels of `region` (shape = region.shape).

    order 0 for labels/masks (dtype kept; bool stays bool), order 1 for intensities (float32 out).
    `mode`/`cval` follow scipy.ndimage for points outside the standardized array.
    """
    reg = as_voxel_box(region)
    shape = np.asarray(source_shape[:3], int)
    if np.any(np.asarray(reg.start) < 0) or np.any(np.asarray(reg.stop) > shape):
        raise ValueError(f"region {reg} lies outside the source grid of shape {tuple(shape)}")
    # source region voxel -> world -> standardized voxel: one affine map, as nibabel.processing composes it.
    mapping = np.linalg.inv(np.asarray(std_affine, float)) @ region_affine(source_affine, reg)
    data = np.asarray(std_array)
    is_bool = data.dtype == bool
    if is_bool:  # scipy cannot interpolate bool; a linearly interpolated mask is thresholded at one half
        data = data.astype(np.float32 if order > 0 else np.uint8)
    elif order > 0:
        data = data.astype(np.float32, copy=False)
    out = ndimage.affine_transform(
        data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=reg.shape, order=order, mode=mode, cval=cval
    )
    if is_bool:
        return out >= 0.5 if order > 0 else out.astype(bool)
    return out
