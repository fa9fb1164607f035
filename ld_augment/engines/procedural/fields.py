"""Small crop and random-field helpers shared by the procedural mask and texture engines.

All per-lesion work happens on a crop around the lesion so the cost scales with the lesion, not the CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def grow_slices(
    start: Sequence[int], stop: Sequence[int], margin: Sequence[int], shape: Sequence[int]
) -> tuple[slice, slice, slice]:
    """The box ``[start, stop)`` grown by ``margin`` voxels per axis and clipped to ``shape``."""
    return tuple(
        slice(max(int(a) - int(m), 0), min(int(b) + int(m), int(n))) for a, b, m, n in zip(start, stop, margin, shape)
    )  # type: ignore[return-value]


def mask_slices(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (clipped); raises ValueError on an empty mask."""
    if not mask.any():
        raise ValueError("empty mask")
    start, stop = [], []
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        start.append(int(idx[0]))
        stop.append(int(idx[-1]) + 1)
    return grow_slices(start, stop, margin, mask.shape)


def mm_to_voxels(mm: float, spacing: Sequence[float]) -> tuple[float, float, float]:
    return tuple(float(mm) / float(s) for s in spacing)  # type: ignore[return-value]


def smooth_noise(
    shape: Sequence[int], sigma_vox: Sequence[float] | float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (float32): a low-frequency random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox, mode="reflect")
    std = float(field.std())
    return field / std if std > 0 else field


def signed_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) to the mask's surface, positive inside, with the surface half a voxel off each side.

    The half-voxel offset puts the surface between the last inside and first outside voxel, which is what a
    partial-volume blend at the edge needs (both voxels get a partial weight).
    """
    sampling = tuple(float(s) for s in spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    half = 0.5 * min(sampling)
    return np.where(mask, inside - half, -(outside - half)).astype(np.float32)


#: Depth (share of the lesion's largest depth) from which the core starts: what the gate measures and the
#: texture engine holds at the requested value. A part-solid nodule's report value is its solid component's,
#: painted inside SOLID_CORE_SHARE with the ground glass around it, so both sides use the deeper core there.
CORE_SHARE = 1.0 / 3.0
SOLID_CORE_SHARE = 0.45


def core_region(mask: np.ndarray, spacing: Sequence[float], share: float = CORE_SHARE) -> np.ndarray:
    """The lesion's core: at least ``share`` of its largest depth from the surface (>= 8 voxels when possible).

    One definition for the engine that paints the requested value and the gate that checks it, so the two
    agree on which voxels carry the report's CT value.
    """
    depth = ndimage.distance_transform_edt(mask, sampling=tuple(float(s) for s in spacing))
    core = mask & (depth >= max(depth.max() * share, min(spacing)))
    if core.sum() < 8:
        deep = mask & (depth >= depth.max() / 2.0)
        core = deep if deep.sum() >= 3 else mask
    return core


def largest_component(mask: np.ndarray, prefer: Sequence[int] | None = None) -> np.ndarray:
    """Keep the connected component that contains ``prefer`` (if any does), else the largest one."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    if prefer is not None:
        idx = tuple(int(p) for p in prefer)
        if all(0 <= i < n for i, n in zip(idx, mask.shape)) and labels[idx] > 0:
            return labels == labels[idx]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def robust_std(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation: a noise estimate that ignores vessels and edges."""
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))
