"""PNG previews: written atomically, readable, with boxes given in any of the accepted forms."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from ld_augment.io.geometry import VoxelBox
from ld_augment.io.preview import save_before_after_preview, save_bbox_preview


def phantom(shape=(40, 36, 30)) -> tuple[np.ndarray, np.ndarray]:
    idx = np.indices(shape).astype(float)
    body = sum(((idx[a] - shape[a] / 2) / (shape[a] / 2.2)) ** 2 for a in range(3)) <= 1
    organ = sum(((idx[a] - c) / r) ** 2 for a, c, r in zip(range(3), (18, 17, 15), (8, 7, 6))) <= 1
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    ct[organ] = 60.0
    return ct, organ


class Box:
    def __init__(self, start, stop):
        self.start, self.stop = start, stop


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(str(path))


def test_bbox_preview_draws_each_box(tmp_path: Path) -> None:
    ct, organ = phantom()
    box = VoxelBox((14, 13, 12), (20, 19, 17))
    one = read_png(save_bbox_preview(ct, organ, [box], tmp_path / "one.png", title="liver"))
    boxes = [((14, 13, 12), (20, 19, 17)), Box((10, 10, 10), (14, 15, 13))]
    two = read_png(save_bbox_preview(ct, organ, boxes, tmp_path / "two.png", title="liver"))
    assert two.shape[0] > 1.5 * one.shape[0]  # one row of panels per box
    red = (two[..., 0] > 0.8) & (two[..., 1] < 0.3) & (two[..., 2] < 0.3)
    green = (two[..., 1] > 0.7) & (two[..., 0] < 0.5) & (two[..., 2] < 0.5)
    assert red.sum() > 50 and green.sum() > 50  # box and organ outlines are drawn
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_bbox_preview_accepts_nibabel_images_and_no_boxes(tmp_path: Path) -> None:
    ct, organ = phantom()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    path = save_bbox_preview(nib.Nifti1Image(ct, affine), nib.Nifti1Image(organ.astype(np.uint8), affine), [],
                             tmp_path / "none.png")
    assert read_png(path).size > 0


def test_before_after_preview(tmp_path: Path) -> None:
    before, organ = phantom()
    lesion = np.zeros_like(organ)
    lesion[16:21, 15:20, 13:17] = True
    after = before.copy()
    after[lesion] = 10.0
    explicit = read_png(save_before_after_preview(before, after, lesion, [(18, 17, 15)], tmp_path / "ba.png"))
    derived = read_png(save_before_after_preview(before, after, lesion, None, tmp_path / "ba2.png", title="t"))
    assert explicit.shape[1] > 3 * explicit.shape[0]  # nine panels side by side: before, after, label per view
    assert derived.size > 0
    with pytest.raises(ValueError, match="shapes differ"):
        save_before_after_preview(before, after[:-1], lesion, None, tmp_path / "bad.png")


def test_before_after_preview_zooms_on_the_lesion(tmp_path: Path) -> None:
    """An 80 mm field of view makes a small lesion's outline several times longer than the whole-slice view."""
    before = np.zeros((240, 200, 40), np.float32)
    lesion = np.zeros(before.shape, bool)
    lesion[100:108, 90:98, 18:24] = True
    after = before.copy()
    after[lesion] = -60.0

    def red_pixels(fov: float) -> int:
        img = read_png(save_before_after_preview(before, after, lesion, None, tmp_path / f"z{fov}.png", fov_mm=fov))
        rgb = img[..., :3].astype(float)
        return int(((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum())

    zoomed, whole = red_pixels(80.0), red_pixels(1000.0)
    assert zoomed > 2 * whole > 0


def test_lung_window_shows_a_ground_glass_nodule(tmp_path: Path) -> None:
    """A -500 HU nodule in -850 HU lung is black on black in the soft-tissue window; the lung window shows both."""
    from ld_augment.io.preview import WINDOWS

    before = np.full((60, 60, 30), -850.0, np.float32)
    lesion = np.zeros(before.shape, bool)
    lesion[26:34, 26:34, 12:18] = True
    after = np.where(lesion, -500.0, before).astype(np.float32)

    def grey_pixels(window) -> int:
        img = read_png(save_before_after_preview(before, after, lesion, None, tmp_path / f"{window[0]}.png",
                                                 window=window))
        rgb = img[..., :3]
        grey = (np.ptp(rgb, axis=-1) < 0.02) & (rgb[..., 0] > 0.2) & (rgb[..., 0] < 0.8)
        return int(grey.sum())

    soft, lung = grey_pixels(WINDOWS["soft tissue"]), grey_pixels(WINDOWS["lung"])
    assert lung > 10 * max(soft, 1), (soft, lung)
