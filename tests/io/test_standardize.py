"""Standardization to RAS + target spacing: world coordinates are preserved, labels stay labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError
from ld_augment.io.nifti import load_label_map, sha256_file
from ld_augment.io.standardize import (
    SourceGeometry,
    resample_to_grid,
    standardize_ct,
    standardize_image,
)

AFFINES = {
    "RAS 1mm": np.array([[1.0, 0, 0, -20], [0, 1.0, 0, 10], [0, 0, 1.0, 30], [0, 0, 0, 1]]),
    "LPS 1mm": np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 35], [0, 0, 1.0, -12], [0, 0, 0, 1]]),
    "LPS 0.7x0.7x3": np.array([[-0.7, 0, 0, 60], [0, -0.7, 0, 44], [0, 0, 3.0, -90], [0, 0, 0, 1]]),
    # voxel axes (i, j, k) point to (S, L, A): a permuted, flipped, anisotropic grid
    "SLA 2x0.9x1.3": np.array([[0, -0.9, 0, 15], [0, 0, 1.3, -25], [2.0, 0, 0, 5], [0, 0, 0, 1]]),
}
SHAPE = (24, 26, 18)
COEF = np.array([3.0, -2.0, 5.0])


def world_of(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (..., 3) of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def ramp(affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    """A linear function of world position: trilinear interpolation reproduces it exactly."""
    return (world_of(affine, shape) @ COEF + 7.0).astype(np.float32)


def inside_source(std: nib.Nifti1Image, affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    """Standardized voxels whose centre maps strictly inside the source voxel-centre box."""
    src = (world_of(std.affine, std.shape) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    return np.all((src >= 0) & (src <= np.array(shape) - 1), axis=-1)


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 0.8, 2.0)])
def test_intensity_at_every_world_point_is_preserved(name: str, spacing: tuple[float, ...]) -> None:
    affine = AFFINES[name]
    source = nib.Nifti1Image(ramp(affine), affine)
    before = np.asanyarray(source.dataobj).copy()
    std = standardize_image(source, spacing)
    assert nib.aff2axcodes(std.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(std.affine)[:3], spacing, atol=1e-6)
    np.testing.assert_allclose(std.affine[:3, :3], np.diag(spacing), atol=1e-6)  # axis-aligned
    np.testing.assert_allclose(std.get_qform(), std.get_sform(), atol=1e-5)
    assert std.get_data_dtype() == np.float32
    data = np.asanyarray(std.dataobj)
    expected = world_of(std.affine, std.shape) @ COEF + 7.0
    inside = inside_source(std, affine)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(data[inside], expected[inside], atol=2e-2)
    assert np.array_equal(np.asanyarray(source.dataobj), before), "input modified"
    # the standardized grid spans the source's world extent (both boxes of voxel centres)
    corners = world_of(affine, SHAPE).reshape(-1, 3)
    std_world = world_of(std.affine, std.shape).reshape(-1, 3)
    assert np.all(std_world.min(0) <= corners.min(0) + 1e-4)
    assert np.all(std_world.max(0) >= corners.max(0) - np.array(spacing))


@pytest.mark.parametrize("name", list(AFFINES))
def test_round_trip_back_to_source_grid(name: str) -> None:
    affine = AFFINES[name]
    source = nib.Nifti1Image(ramp(affine), affine)
    std = standardize_image(source, (1.0, 1.0, 1.0))
    back = resample_to_grid(std, SHAPE, affine, is_label=False, cval=np.nan)
    np.testing.assert_allclose(back.affine, affine)
    data = np.asanyarray(back.dataobj)
    core = (slice(2, -2),) * 3  # the border of the source is only half-covered by the coarser std grid
    np.testing.assert_allclose(data[core], ramp(affine)[core], atol=2e-2)


def blobs(shape=SHAPE) -> np.ndarray:
    """Three ellipsoids with TotalSegmentator-like ids (liver 5, a kidney 3, bladder 104)."""
    idx = np.indices(shape).astype(float)
    out = np.zeros(shape, np.uint8)
    specs = ((5, (8, 9, 8), (5, 6, 4)), (3, (17, 18, 9), (4, 4, 5)), (104, (12, 20, 13), (3, 3, 3)))
    for label, centre, radii in specs:
        d = sum(((idx[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
        out[d <= 1] = label
    return out


@pytest.mark.parametrize("name", list(AFFINES))
def test_label_maps_stay_integer_and_in_place(name: str) -> None:
    affine = AFFINES[name]
    labels = blobs()
    std = standardize_image(nib.Nifti1Image(labels.astype(np.float32), affine), is_label=True)
    data = np.asanyarray(std.dataobj)
    assert np.issubdtype(data.dtype, np.integer) and std.get_data_dtype() == data.dtype
    assert set(np.unique(data)) == {0, 3, 5, 104}
    spacing_in = np.linalg.norm(affine[:3, :3], axis=0)
    src_world = world_of(affine, SHAPE)
    std_world = world_of(std.affine, std.shape)
    for label in (3, 5, 104):
        centroid_in = src_world[labels == label].mean(0)
        centroid_out = std_world[data == label].mean(0)
        assert np.all(np.abs(centroid_in - centroid_out) < spacing_in.max() / 2 + 0.5), label
        volume_in = (labels == label).sum() * np.prod(spacing_in)
        volume_out = (data == label).sum() * 1.0
        assert abs(volume_out - volume_in) / volume_in < 0.25, (label, volume_in, volume_out)
    back = np.asanyarray(resample_to_grid(std, SHAPE, affine, is_label=True).dataobj)
    assert set(np.unique(back)) == {0, 3, 5, 104}
    agree = (back == labels)[labels > 0].mean()
    assert agree > 0.8, agree


def test_single_labelled_voxel_lands_within_half_a_source_voxel() -> None:
    affine = AFFINES["LPS 0.7x0.7x3"]
    labels = np.zeros(SHAPE, np.uint8)
    labels[11, 7, 9] = 1
    # a target finer than the source so every source voxel owns at least one output voxel
    std = standardize_image(nib.Nifti1Image(labels, affine), (0.5, 0.5, 1.0), is_label=True)
    hits = world_of(std.affine, std.shape)[np.asanyarray(std.dataobj) == 1]
    target = affine[:3, :3] @ np.array([11, 7, 9]) + affine[:3, 3]
    assert len(hits) > 0
    assert np.all(np.abs(hits - target) <= np.array([0.35, 0.35, 1.5]) + 1e-6)


def test_already_standard_image_is_copied_not_resampled() -> None:
    affine = AFFINES["RAS 1mm"]
    data = ramp(affine)
    std = standardize_image(nib.Nifti1Image(data, affine))
    assert np.array_equal(np.asanyarray(std.dataobj), data)
    np.testing.assert_allclose(std.affine, affine)
    np.asarray(std.dataobj)[0, 0, 0] = -5
    assert data[0, 0, 0] != -5


def test_int16_ct_is_not_truncated_by_interpolation() -> None:
    affine = AFFINES["LPS 0.7x0.7x3"]
    data = np.zeros(SHAPE, np.int16)
    data[::2] = 1  # a stripe pattern: interpolated values must come out fractional
    std = standardize_image(nib.Nifti1Image(data, affine))
    values = np.asanyarray(std.dataobj)
    assert values.dtype == np.float32 and np.any((values > 0.01) & (values < 0.99))


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_bad_target_spacing_is_a_config_error(spacing) -> None:
    with pytest.raises(ConfigError, match="spacing must be three positive numbers"):
        standardize_image(nib.Nifti1Image(ramp(AFFINES["RAS 1mm"]), AFFINES["RAS 1mm"]), spacing)


def test_source_geometry_round_trips_through_json(tmp_path: Path) -> None:
    affine = AFFINES["LPS 0.7x0.7x3"]
    data = (ramp(affine) * 10).astype(np.int16)
    data[0, 0, 0] = -1000
    data[1, 1, 1] = 1000
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    digest = sha256_file(path)
    std, geometry = standardize_ct(path)
    assert geometry.sha256 == digest == sha256_file(path)
    assert geometry.shape == SHAPE and geometry.dtype == "int16" and geometry.path == str(path)
    np.testing.assert_allclose(geometry.affine_array, affine, atol=1e-6)
    again = SourceGeometry.from_dict(json.loads(json.dumps(geometry.to_dict())))
    assert again == geometry
    assert std.get_data_dtype() == np.float32 and nib.aff2axcodes(std.affine) == ("R", "A", "S")
    with pytest.raises(ConfigError, match="unknown keys \\['colour'\\]"):
        SourceGeometry.from_dict({**geometry.to_dict(), "colour": "red"})


def test_in_memory_source_geometry_has_no_hash() -> None:
    img = nib.Nifti1Image(ramp(AFFINES["RAS 1mm"]), AFFINES["RAS 1mm"])
    geometry = SourceGeometry.from_image(None, img)
    assert geometry.path is None and geometry.sha256 is None and geometry.dtype == "float32"


def test_real_ct_standardizes_with_its_segmentation(real_ct: Path, real_seg: Path) -> None:
    hashes = sha256_file(real_ct), sha256_file(real_seg)
    std, geometry = standardize_ct(real_ct, (1.5, 1.5, 1.5))
    seg = standardize_image(load_label_map(real_seg), (1.5, 1.5, 1.5), is_label=True)
    assert std.shape == seg.shape
    np.testing.assert_allclose(std.affine, seg.affine)
    liver = np.asanyarray(seg.dataobj) == 5
    expected = 38_634 * (3.0 / 1.5) ** 3
    assert abs(liver.sum() - expected) / expected < 0.08
    hu = np.asanyarray(std.dataobj)[liver]
    assert 20 < float(np.median(hu)) < 80  # liver parenchyma, about 45 HU in this crop
    assert geometry.shape == (122, 101, 30) and geometry.dtype == "int16"
    assert (sha256_file(real_ct), sha256_file(real_seg)) == hashes
