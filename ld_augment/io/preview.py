"""PNG previews for a human check of a case: where the lesion boxes are, and what the synthesis changed.

Figures are built with the object-oriented API on an Agg canvas, never through pyplot: no global backend
switch, no figure registry to leak, safe in worker threads. Arrays are in voxel order (x, y, z) of the
standardized RAS grid; panels are drawn in radiological convention (patient's right on the left) with z/y upwards, so anatomy appears upright. Images may be nibabel images (spacing taken from the header, used
for the aspect ratio) or numpy arrays (spacing argument, default isotropic).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ld_augment.io.atomic import atomic_save_figure
from ld_augment.io.geometry import as_voxel_box

#: Display windows (lowest, highest HU shown). In the abdominal soft-tissue window aerated lung and a
#: ground-glass nodule (-850 / -500 HU) are both black: a lung lesion's preview needs the lung window (W1500 L-600).
WINDOWS = {"soft tissue": (-160.0, 240.0), "lung": (-1350.0, 150.0)}
HU_WINDOW = WINDOWS["soft tissue"]
MAX_ROWS = 8  # a preview with more rows is unreadable; the first ones are shown
LESION_FOV_MM = 80.0  # field of view around each lesion in the before/after preview: the margin must be visible
# (name, array axis held fixed, the two axes shown as (horizontal, vertical))
VIEWS = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))


def _array_and_spacing(img: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    if hasattr(img, "dataobj"):
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        return data, tuple(spacing) if spacing is not None else zooms
    return np.asarray(img), tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)


def _panel(
    ax: Any, volume: np.ndarray, axis: int, index: int, spacing: Sequence[float], shown: tuple[int, int],
    window: Sequence[float] = HU_WINDOW,
) -> np.ndarray:
    """Draw one slice of `volume` (CT window) and return the 2D slice index tuple for overlays."""
    sl = np.take(volume, index, axis=axis).astype(np.float32)
    h, v = shown
    ax.imshow(sl.T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              aspect=spacing[v] / spacing[h], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if h == 0:  # radiological convention: the patient's right (+x in RAS) on the viewer's left
        ax.invert_xaxis()
    return sl


def _zoom(ax: Any, centre: Sequence[int], spacing: Sequence[float], shown: tuple[int, int], fov_mm: float,
          shape: Sequence[int]) -> None:
    """Limit a panel to ``fov_mm`` around ``centre`` (keeping the radiological left-right flip of axis 0)."""
    h, v = shown
    half_h, half_v = fov_mm / 2.0 / spacing[h], fov_mm / 2.0 / spacing[v]
    lo_h, hi_h = max(centre[h] - half_h, -0.5), min(centre[h] + half_h, shape[h] - 0.5)
    ax.set_xlim((hi_h, lo_h) if h == 0 else (lo_h, hi_h))
    ax.set_ylim(max(centre[v] - half_v, -0.5), min(centre[v] + half_v, shape[v] - 0.5))


def _outline(ax: Any, mask: np.ndarray | None, axis: int, index: int, color: str) -> None:
    if mask is None:
        return
    sl = np.take(mask, index, axis=axis)
    if sl.any() and not sl.all():
        ax.contour(sl.T.astype(np.float32), levels=[0.5], colors=color, linewidths=0.8, origin="lower")


def _figure(rows: int, cols: int, width: float, row_height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, row_height * rows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _finish(fig: Figure, path: str | os.PathLike, title: str | None) -> Path:
    if title:
        fig.suptitle(title)
    return atomic_save_figure(fig, path)


def save_bbox_preview(
    ct: Any,
    organ_mask: Any,
    boxes: Sequence[Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
    window: Sequence[float] = HU_WINDOW,
) -> Path:
    """Three orthogonal slices through each box centre, organ outlined in green and the box in red.

    `boxes`: objects with `.start`/`.stop` voxel tuples (half-open) or (start, stop) pairs.
    """
    volume, sp = _array_and_spacing(ct, spacing)
    organ = None if organ_mask is None else _array_and_spacing(organ_mask, sp)[0].astype(bool)
    voxel_boxes = [as_voxel_box(b) for b in boxes][:MAX_ROWS]
    rows = max(1, len(voxel_boxes))
    fig, axes = _figure(rows, 3, 10, 3.4)
    if not voxel_boxes:  # still useful: where the organ is
        centre = np.array(volume.shape) // 2
        for col, (view, axis, shown) in enumerate(VIEWS):
            _panel(axes[0, col], volume, axis, int(centre[axis]), sp, shown, window)
            _outline(axes[0, col], organ, axis, int(centre[axis]), "lime")
            axes[0, col].set_title(f"{view} (no boxes)", fontsize=8)
    for row, box in enumerate(voxel_boxes):
        centre = [int(np.clip((a + b - 1) // 2, 0, n - 1)) for a, b, n in zip(box.start, box.stop, volume.shape)]
        for col, (view, axis, shown) in enumerate(VIEWS):
            ax = axes[row, col]
            _panel(ax, volume, axis, centre[axis], sp, shown, window)
            _outline(ax, organ, axis, centre[axis], "lime")
            h, v = shown
            ax.add_patch(Rectangle((box.start[h] - 0.5, box.start[v] - 0.5), box.stop[h] - box.start[h],
                                   box.stop[v] - box.start[v], fill=False, edgecolor="red", linewidth=1.2))
            ax.set_title(f"box {row + 1} {view} @ {centre[axis]}", fontsize=8)
    return _finish(fig, path, title)


def _lesion_centres(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Centre of mass of each connected lesion, for callers that pass no centres."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    coms = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    return [tuple(int(round(c)) for c in com) for com in coms]  # type: ignore[misc]


def save_before_after_preview(
    ct_before: Any,
    ct_after: Any,
    lesion_mask: Any,
    centres: Sequence[Sequence[float]] | None,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
    fov_mm: float = LESION_FOV_MM,
    window: Sequence[float] = HU_WINDOW,
) -> Path:
    """Per lesion one row: before, after and the label outline, for axial, coronal and sagittal slices.

    Each panel is cropped to ``fov_mm`` around the lesion so its margin and texture are visible, and the
    outline is drawn on its own panel beside the image, never over the margin it would hide.
    `centres`: voxel coordinates of the lesions (None: centres of the mask's connected components).
    `window`: the display window (``WINDOWS``), the lung one for a lung lesion.
    """
    before, sp = _array_and_spacing(ct_before, spacing)
    after, _ = _array_and_spacing(ct_after, sp)
    if before.shape != after.shape:
        raise ValueError(f"before/after shapes differ: {before.shape} vs {after.shape}")
    mask = None if lesion_mask is None else _array_and_spacing(lesion_mask, sp)[0].astype(bool)
    if centres is None:
        centres = _lesion_centres(mask) if mask is not None else []
    points = [tuple(int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(p, before.shape)) for p in centres]
    points = points[:MAX_ROWS] or [tuple(n // 2 for n in before.shape)]
    fig, axes = _figure(len(points), 9, 18, 2.2)
    for row, centre in enumerate(points):
        for col, (view, axis, shown) in enumerate(VIEWS):
            for k, (label, volume) in enumerate((("before", before), ("after", after), ("label", after))):
                ax = axes[row, 3 * col + k]
                _panel(ax, volume, axis, centre[axis], sp, shown, window)
                if label == "label":
                    _outline(ax, mask, axis, centre[axis], "red")
                _zoom(ax, centre, sp, shown, fov_mm, before.shape)
                ax.set_title(f"lesion {row + 1} {view} {label}", fontsize=7)
    return _finish(fig, path, title)
