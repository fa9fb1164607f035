"""Writing back into the source grid: a standardized box maps to a padded source region, and only it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ld_augment.io.geometry import (
    VoxelBox,
    as_voxel_box,
    box_corners_world,
    region_affine,
    resample_region_to_source,
    source_region_for_std_box,
)
from ld_augment.io.standardize import standardize_image

SOURCE_AFFINE = np.array([[-0.7, 0, 0, 60], [0, -0.7, 0, 44], [0, 0, 3.0, -90], [0, 0, 0, 1]])  # LPS
SOURCE_SHAPE = (40, 36, 14)
COEF = np.array([2.0, -1.0, 4.0])


def world_of(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def source_ramp() -> np.ndarray:
    return (world_of(SOURCE_AFFINE, SOURCE_SHAPE) @ COEF).astype(np.float32)


@pytest.fixture(scope="module")
def std() -> nib.Nifti1Image:
    return standardize_image(nib.Nifti1Image(source_ramp(), SOURCE_AFFINE), (1.0, 1.0, 1.0))


def test_voxel_box_accepts_pairs_objects_and_dicts() -> None:
    box = as_voxel_box(((1, 2, 3), (4, 6, 8)))
    assert box.shape == (3, 4, 5) and box.slices == (slice(1, 4), slice(2, 6), slice(3, 8))

    class Other:
        start, stop = (0, 0, 0), (2, 2, 2)

    assert as_voxel_box(Other()) == VoxelBox((0, 0, 0), (2, 2, 2))
    assert VoxelBox.from_dict(box.to_dict()) == box
    assert VoxelBox((1, 1, 1), (1, 5, 5)).is_empty


def test_source_region_covers_the_box_in_world_space(std: nib.Nifti1Image) -> None:
    box = VoxelBox((10, 8, 12), (18, 15, 20))
    region = source_region_for_std_box(box, std.affine, SOURCE_SHAPE, SOURCE_AFFINE, pad=0)
    box_world = box_corners_world(box, std.affine)
    region_world = box_corners_world(region, SOURCE_AFFINE)
    assert np.all(region_world.min(0) <= box_world.min(0) + 1e-6)
    assert np.all(region_world.max(0) >= box_world.max(0) - 1e-6)
    # ... and is tight: at most one extra voxel per side beyond the box
    spacing = np.abs(np.diag(SOURCE_AFFINE)[:3])
    assert np.all(region_world.min(0) >= box_world.min(0) - spacing - 1e-6)
    assert np.all(region_world.max(0) <= box_world.max(0) + spacing + 1e-6)
    padded = source_region_for_std_box(box, std.affine, SOURCE_SHAPE, SOURCE_AFFINE, pad=2)
    assert all(p == r - 2 for p, r in zip(padded.start, region.start))
    assert all(p == r + 2 for p, r in zip(padded.stop, region.stop))


def test_source_region_is_clipped_and_may_be_empty(std: nib.Nifti1Image) -> None:
    whole = VoxelBox((-50, -50, -50), tuple(n + 50 for n in std.shape))
    region = source_region_for_std_box(whole, std.affine, SOURCE_SHAPE, SOURCE_AFFINE)
    assert region == VoxelBox((0, 0, 0), SOURCE_SHAPE)
    far = VoxelBox((500, 500, 500), (510, 510, 510))
    assert source_region_for_std_box(far, std.affine, SOURCE_SHAPE, SOURCE_AFFINE).is_empty


def test_region_affine_points_at_the_region_start() -> None:
    region = VoxelBox((3, 4, 5), (9, 9, 9))
    sub = region_affine(SOURCE_AFFINE, region)
    np.testing.assert_allclose(sub[:3, 3], SOURCE_AFFINE[:3, :3] @ np.array([3, 4, 5]) + SOURCE_AFFINE[:3, 3])


def test_intensities_resampled_onto_a_region_match_the_source(std: nib.Nifti1Image) -> None:
    box = VoxelBox((8, 8, 10), (20, 18, 22))
    region = source_region_for_std_box(box, std.affine, SOURCE_SHAPE, SOURCE_AFFINE)
    data = np.asanyarray(std.dataobj)
    out = resample_region_to_source(data, std.affine, SOURCE_SHAPE, SOURCE_AFFINE, region, order=1)
    assert out.shape == region.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, source_ramp()[region.slices], atol=2e-2)


def test_masks_resampled_onto_a_region_keep_their_place(std: nib.Nifti1Image) -> None:
    std_mask = np.zeros(std.shape, bool)
    std_mask[12:17, 10:15, 14:20] = True  # a 5x5x6 mm block in RAS
    box = VoxelBox((12, 10, 14), (17, 15, 20))
    region = source_region_for_std_box(box, std.affine, SOURCE_SHAPE, SOURCE_AFFINE)
    for order in (0, 1):
        out = resample_region_to_source(std_mask, std.affine, SOURCE_SHAPE, SOURCE_AFFINE, region, order=order)
        assert out.dtype == bool and out.any()
        world = world_of(region_affine(SOURCE_AFFINE, region), region.shape)[out]
        lo, hi = box_corners_world(box, std.affine).min(0), box_corners_world(box, std.affine).max(0)
        assert np.all(world >= lo - 0.5) and np.all(world <= hi + 0.5)
    # the padded region holds the whole mask: nothing of it falls outside the neighbourhood
    total = resample_region_to_source(std_mask, std.affine, SOURCE_SHAPE, SOURCE_AFFINE,
                                      VoxelBox((0, 0, 0), SOURCE_SHAPE), order=0)
    inside = np.zeros(SOURCE_SHAPE, bool)
    inside[region.slices] = True
    assert total.any() and not (total & ~inside).any()


def test_region_outside_the_source_grid_is_refused(std: nib.Nifti1Image) -> None:
    with pytest.raises(ValueError, match="outside the source grid"):
        resample_region_to_source(np.zeros(std.shape), std.affine, SOURCE_SHAPE, SOURCE_AFFINE,
                                  VoxelBox((0, 0, 0), (41, 5, 5)), order=0)
