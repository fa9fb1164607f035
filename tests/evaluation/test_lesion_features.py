"""Lesion features on shapes whose answers are known: a ball, a cube, a prolate spheroid, sharp and blurred edges."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ld_augment.errors import InputError
from ld_augment.evaluation.lesion_features import (
    lung_mask_from_hu, measure_case, measure_lesion, to_common_spacing,
)

N = 40


def _grid(n: int = N) -> np.ndarray:
    return np.indices((n, n, n)).astype(float) - n / 2 + 0.5


def _ball(radius: float, n: int = N) -> np.ndarray:
    return np.sqrt((_grid(n) ** 2).sum(0)) <= radius


def _sphericity_of_spheroid(a: float, b: float) -> float:
    e = math.sqrt(1 - b * b / (a * a))
    area = 2 * math.pi * b * b * (1 + a / (b * e) * math.asin(e))
    volume = 4 / 3 * math.pi * a * b * b
    return math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area


@pytest.fixture(scope="module")
def organ() -> np.ndarray:
    return np.ones((N, N, N), bool)


def test_ball_size_and_shape(organ: np.ndarray) -> None:
    ball = _ball(9.0)
    f = measure_lesion(np.where(ball, 60.0, 0.0), ball, organ, (1.0, 1.0, 1.0))
    assert f["equivalent_diameter_mm"] == pytest.approx(18.0, abs=0.6)
    assert 17.5 <= f["longest_axial_diameter_mm"] <= 20.0
    assert f["sphericity"] > 0.93
    assert f["convexity"] > 0.95
    assert f["flat_face_fraction"] < 0.15
    assert f["components"] == 1
    assert f["inside_organ_fraction"] == 1.0


def test_spacing_scales_sizes_not_shape(organ: np.ndarray) -> None:
    ball = _ball(9.0)
    one = measure_lesion(np.where(ball, 60.0, 0.0), ball, organ, (1.0, 1.0, 1.0))
    two = measure_lesion(np.where(ball, 60.0, 0.0), ball, organ, (2.0, 2.0, 2.0))
    assert two["equivalent_diameter_mm"] == pytest.approx(2 * one["equivalent_diameter_mm"], rel=1e-6)
    assert two["sphericity"] == pytest.approx(one["sphericity"], abs=1e-6)


def test_cube_has_flat_faces_ball_does_not(organ: np.ndarray) -> None:
    g = _grid()
    cube = (np.abs(g) <= 8).all(0)
    f = measure_lesion(np.where(cube, 60.0, 0.0), cube, organ, (1.0, 1.0, 1.0))
    assert f["flat_face_fraction"] > 0.7
    assert f["convexity"] > 0.97  # a cube is convex: flatness, not concavity, gives it away
    assert f["sphericity"] < 0.88


def test_spheroid_sphericity_follows_the_analytic_ratio(organ: np.ndarray) -> None:
    g = _grid()
    spheroid = (g[0] / 15) ** 2 + (g[1] / 5) ** 2 + (g[2] / 5) ** 2 <= 1
    ball = _ball(9.0)
    s_sph = measure_lesion(np.where(spheroid, 60.0, 0.0), spheroid, organ, (1.0, 1.0, 1.0))["sphericity"]
    s_ball = measure_lesion(np.where(ball, 60.0, 0.0), ball, organ, (1.0, 1.0, 1.0))["sphericity"]
    assert s_sph / s_ball == pytest.approx(_sphericity_of_spheroid(15, 5), abs=0.04)
    f = measure_lesion(np.where(spheroid, 60.0, 0.0), spheroid, organ, (1.0, 1.0, 1.0))
    assert f["longest_axial_diameter_mm"] == pytest.approx(30.0, abs=1.5)


def test_concave_lesion_has_low_convexity(organ: np.ndarray) -> None:
    g = _grid()
    ball = _ball(12.0)
    lobed = ball & ~(np.sqrt((g[0] - 10) ** 2 + g[1] ** 2 + g[2] ** 2) <= 9)  # a bite out of the ball
    f = measure_lesion(np.where(lobed, 60.0, 0.0), lobed, organ, (1.0, 1.0, 1.0))
    assert f["convexity"] < 0.9


def test_contrast_core_and_parenchyma(organ: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    ball = _ball(8.0)
    ct = np.where(ball, 20.0, 55.0) + rng.normal(0, 5, ball.shape)
    f = measure_lesion(ct, ball, organ, (1.0, 1.0, 1.0))
    assert f["core_hu"] == pytest.approx(20.0, abs=2.0)
    assert f["parenchyma_hu"] == pytest.approx(55.0, abs=2.0)
    assert f["contrast_hu"] == pytest.approx(-35.0, abs=3.0)
    # same noise inside and out: heterogeneity and grain match the organ's
    assert f["heterogeneity_ratio"] == pytest.approx(1.0, abs=0.2)
    assert f["fine_texture_ratio"] == pytest.approx(1.0, abs=0.15)


def test_heterogeneous_lesion_is_measured_as_such(organ: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    ball = _ball(9.0)
    blobs = ndimage.gaussian_filter(rng.normal(0, 1, ball.shape), 2.0)
    ct = np.where(ball, 20.0 + 40.0 * blobs / blobs.std(), 55.0) + rng.normal(0, 5, ball.shape)
    f = measure_lesion(ct, ball, organ, (1.0, 1.0, 1.0))
    assert f["heterogeneity_ratio"] > 3.0
    assert f["heterogeneity_std"] > 25.0


def test_margin_width_sharp_vs_blurred(organ: np.ndarray) -> None:
    ball = _ball(10.0)
    sharp = np.where(ball, 60.0, 0.0)
    sigma = 2.0
    blurred = ndimage.gaussian_filter(sharp, sigma)
    w_sharp = measure_lesion(sharp, ball, organ, (1.0, 1.0, 1.0))["margin_width_mm"]
    w_blur = measure_lesion(blurred, ball, organ, (1.0, 1.0, 1.0))["margin_width_mm"]
    assert w_sharp <= 1.3  # about one voxel
    # a Gaussian edge rises 10-90 % over 2 x 1.2816 sigma
    assert w_blur == pytest.approx(2 * 1.2816 * sigma, rel=0.2)
    w_blur_2mm = measure_lesion(blurred, ball, organ, (2.0, 2.0, 2.0))["margin_width_mm"]
    assert w_blur_2mm == pytest.approx(2 * w_blur, rel=0.1)


def test_label_larger_than_visible_lesion(organ: np.ndarray) -> None:
    visible = _ball(7.0)
    label = _ball(10.0)
    ct = np.where(visible, 60.0, 0.0)
    f = measure_lesion(ct, label, organ, (1.0, 1.0, 1.0))
    assert f["visible_diameter_ratio"] == pytest.approx(7.0 / 10.0, abs=0.06)
    assert f["label_below_half_fraction"] == pytest.approx(1 - (7 / 10) ** 3, abs=0.06)
    honest = measure_lesion(ct, visible, organ, (1.0, 1.0, 1.0))
    assert honest["visible_diameter_ratio"] > 0.95


def test_fraction_inside_organ_and_components() -> None:
    ball = _ball(8.0)
    organ = np.zeros(ball.shape, bool)
    organ[: N // 2] = True  # half the ball lies in the organ
    f = measure_lesion(np.where(ball, 60.0, 0.0), ball, organ, (1.0, 1.0, 1.0))
    assert f["inside_organ_fraction"] == pytest.approx(0.5, abs=0.05)
    g = _grid()
    two = (np.sqrt((g[0] - 8) ** 2 + g[1] ** 2 + g[2] ** 2) <= 4) | (np.sqrt((g[0] + 8) ** 2 + g[1] ** 2 + g[2] ** 2) <= 4)
    rows = measure_case(np.where(two, 60.0, 0.0), two, np.ones_like(two), (1.0, 1.0, 1.0))
    assert len(rows) == 2 and all(r["components"] == 2 for r in rows)
    whole = measure_case(np.where(two, 60.0, 0.0), two, np.ones_like(two), (1.0, 1.0, 1.0), per_component=False)
    assert len(whole) == 1 and whole[0]["components"] == 2


def test_empty_or_mismatched_input_is_refused(organ: np.ndarray) -> None:
    with pytest.raises(InputError, match="empty"):
        measure_lesion(np.zeros((N, N, N)), np.zeros((N, N, N), bool), organ, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="grid"):
        measure_lesion(np.zeros((N, N, N)), _ball(5.0), organ[:-1], (1.0, 1.0, 1.0))


def test_common_spacing_keeps_a_ball_a_ball() -> None:
    """A ball in an anisotropic LPS grid, resampled to 1 mm RAS, keeps its size and shape."""
    sp = np.array([0.7, 0.7, 2.0])
    shape = (60, 60, 22)
    g = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
    xx, yy, zz = np.meshgrid(*g, indexing="ij")
    ball = np.sqrt(xx**2 + yy**2 + zz**2) <= 9.0
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])  # LPS like LIDC
    ct_img = nib.Nifti1Image(np.where(ball, 40, -800).astype(np.int16), affine)
    mask_img = nib.Nifti1Image(ball.astype(np.uint8), affine)
    ct, (mask,), spacing = to_common_spacing(ct_img, [mask_img], (1.0, 1.0, 1.0))
    assert spacing == (1.0, 1.0, 1.0)
    organ = lung_mask_from_hu(ct, mask, spacing)
    f = measure_lesion(ct, mask, organ, spacing)
    assert f["equivalent_diameter_mm"] == pytest.approx(18.0, rel=0.06)
    assert f["sphericity"] > 0.9
    assert f["contrast_hu"] == pytest.approx(840.0, abs=40.0)


def test_coarser_common_spacing_averages_like_a_coarse_acquisition() -> None:
    """A thin-slice scan compared at 3 mm is averaged over the 3 mm voxel first: its noise drops as a 3 mm
    acquisition's would (point sampling kept thin-slice noise and edges: LIDC at 3 mm looked sharper and rougher
    than any 3 mm scan), and the lesion keeps its size."""
    rng = np.random.default_rng(0)
    sp = np.array([0.7, 0.7, 3.0])
    shape = (90, 90, 16)
    g = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
    xx, yy, zz = np.meshgrid(*g, indexing="ij")
    ball = np.sqrt(xx**2 + yy**2 + zz**2) <= 10.0
    ct = np.where(ball, 40.0, -800.0) + rng.normal(0.0, 60.0, shape)
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    ct_img = nib.Nifti1Image(ct.astype(np.float32), affine)
    out, (mask,), spacing = to_common_spacing(ct_img, [nib.Nifti1Image(ball.astype(np.uint8), affine)],
                                              (3.0, 3.0, 3.0))
    organ = lung_mask_from_hu(out, mask, spacing)
    f = measure_lesion(out, mask, organ, spacing)
    assert f["equivalent_diameter_mm"] == pytest.approx(20.0, rel=0.1)
    assert f["heterogeneity_std"] < 35.0  # 60 HU thin-slice noise averaged over ~4x4 in-plane voxels


def test_mask_touching_its_volume_edge_does_not_grow_past_it() -> None:
    """A mask filling its volume's 4 slices of 2.5 mm (10 mm, as an LIDC VOI ends at the nodule's last slice)
    is 3 voxels deep at 3 mm, not 4: beyond the last slice there is no lesion to carry on."""
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    mask = np.zeros((30, 30, 4), np.uint8)
    mask[10:20, 10:20, :] = 1
    ct = np.where(mask > 0, 30.0, -800.0).astype(np.float32)
    _, (out,), _ = to_common_spacing(nib.Nifti1Image(ct, affine), [nib.Nifti1Image(mask, affine)], (3.0, 3.0, 3.0))
    depth = int(np.ptp(np.nonzero(out)[2])) + 1
    assert depth == 3


def test_mask_already_on_the_grid_is_unchanged() -> None:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 3:6, 0:2] = 1  # touching the edge, on the grid: nothing to interpolate
    _, (out,), _ = to_common_spacing(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine),
                                     [nib.Nifti1Image(mask, affine)], (3.0, 3.0, 3.0))
    assert np.array_equal(out, mask > 0)


def test_lesion_of_a_few_voxels_has_no_margin_width(organ: np.ndarray) -> None:
    """1-3 voxels are all edge: no margin width is claimed for them (LIDC at 3 mm: 15 % of nodules), while a
    ball's is measured."""
    ct = np.full((N, N, N), -800.0, np.float32)
    tiny = np.zeros((N, N, N), bool)
    tiny[20, 20, 20:22] = True
    ct[tiny] = 0.0
    assert math.isnan(measure_lesion(ct, tiny, organ, (3.0, 3.0, 3.0))["margin_width_mm"])
    ball = _ball(6.0)
    ct_ball = np.where(ball, 0.0, -800.0).astype(np.float32)
    assert math.isfinite(measure_lesion(ndimage.gaussian_filter(ct_ball, 1.0), ball, organ, (1.0,) * 3)["margin_width_mm"])


def test_surface_roughness_tells_a_notched_surface_from_a_smooth_one() -> None:
    """A voxelized ball has (almost) no voxel a one-voxel opening or closing changes; a ball whose surface is drawn
    from one-voxel noise has many; a mask touching the array's border is measured as if padded."""
    from ld_augment.evaluation.lesion_features import surface_roughness

    grid = np.indices((25, 25, 25)) - 12
    radius = np.sqrt((grid**2).sum(axis=0))
    rng = np.random.default_rng(0)
    smooth = surface_roughness(radius <= 5)
    notched = surface_roughness(radius + rng.uniform(-1.0, 1.0, radius.shape) <= 5)
    assert smooth < 0.08 and notched > 0.25, (smooth, notched)
    touching = radius[:, :, 12:] <= 5  # cut through the ball's middle by the array's edge
    assert surface_roughness(touching) == surface_roughness(np.pad(touching, 3))
    assert np.isnan(surface_roughness(np.zeros((4, 4, 4), bool)))
