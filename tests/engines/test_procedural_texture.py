"""Procedural texture + adherence: the rendered lesion measures as the report asks, and nothing else changes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from ld_augment.engines.adherence import measure_adherence
from ld_augment.engines.procedural import ProceduralMaskEngine, ProceduralTextureEngine
from ld_augment.engines.procedural.fields import robust_std
from ld_augment.engines.quality import lesion_quality, visible_extent_ratio
from ld_augment.placement.bboxes import BBox, place_lesions

LIVER_V2 = LIVER = 5  # TotalSegmentator liver (v1 and v2)


def _synthesize(case, label: int, organ: str, report, seed: int, texture: ProceduralTextureEngine | None = None):
    ctx = case.context(label, organ)
    rng = np.random.default_rng(seed)
    (box,) = place_lesions(ctx.organ_mask, [report.size], cavity=report.cavity, rng=rng, organ_name=organ)
    mask = ProceduralMaskEngine().generate_mask(ctx, box, report, rng)
    after = (texture or ProceduralTextureEngine()).render(ctx, mask, report, rng)
    return ctx, mask, after, measure_adherence(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing,
                                               organ_name=organ)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("density", "sign"), [("hypodense lesion", -1), ("hyperdense lesion", 1)])
def test_hypo_lower_hyper_higher_on_real_liver(real_case, density: str, sign: int, seed: int, make_report) -> None:
    report = make_report(density=density, shape="irregular", density_variations="heterogeneous")
    _, _, _, adh = _synthesize(real_case, LIVER_V2, "liver", report, seed)
    assert adh["requested_contrast_sign"] == sign and adh["contrast_ok"] is True
    assert sign * adh["measured_contrast_hu"] > 15.0


def test_isodense_stays_close(real_case, make_report) -> None:
    _, _, _, adh = _synthesize(real_case, LIVER_V2, "liver", make_report(density="isodense lesion"), 0)
    assert abs(adh["measured_contrast_hu"]) < 15.0 and adh["contrast_ok"] is True


@pytest.mark.parametrize(("ct_value", "density"), [(-5.0, "hypodense lesion"), (20.0, "hypodense lesion"),
                                                   (95.0, "hyperdense lesion")])
def test_given_ct_value_sets_the_core(real_case, ct_value: float, density: str, make_report) -> None:
    """The core (not a label-wide mean dragged by a blended rim) lands on the requested value."""
    report = make_report(ct_value=ct_value, density=density, shape="irregular", density_variations="heterogeneous",
                         surface_characteristics="ill-defined margin", specific_features=["stone"])
    ctx, mask, after, adh = _synthesize(real_case, LIVER_V2, "liver", report, 4)
    quality = lesion_quality(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing, organ_name="liver")
    assert adh["requested_ct_value"] == ct_value and abs(quality["core_error_hu"]) <= 10.0, quality


def test_core_on_request_with_fat_and_gas_under_the_label(generated_case, make_report) -> None:
    """Fat and gas in the lesion's neighbourhood are replaced, not blended: no fat left, core on the request."""
    ctx = generated_case.context(LIVER, "liver")
    ct = ctx.ct.copy()
    ct[40:52, 30:50, 18:32] = -100.0  # a fat cleft through the lesion site (a pancreas' lobulation)
    ct[40:44, 30:50, 18:32] = -700.0  # and gas (a bowel loop beside a stomach wall)
    ctx = replace(ctx, ct=ct)
    box = BBox((45, 40, 25), (24, 24, 16))
    for seed in range(3):
        report = make_report(ct_value=35.0, surface_characteristics="ill-defined margin")
        mask = ProceduralMaskEngine().generate_mask(ctx, box, report, np.random.default_rng(seed))
        after = ProceduralTextureEngine().render(ctx, mask, report, np.random.default_rng(seed))
        quality = lesion_quality(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing, organ_name="liver")
        assert abs(quality["core_error_hu"]) <= 20.0 and quality["foreign_fraction"] <= 0.02, quality
        assert (ct[mask] < -50).mean() > 0.2  # the test is meaningful: fat/gas WAS under the label


def test_label_is_the_half_contrast_surface(generated_case, make_report) -> None:
    """Well- and ill-defined alike, the half-contrast region matches the label (within 10 % in diameter)."""
    ctx = generated_case.context(LIVER, "liver")
    box = BBox((45, 40, 25), (24, 24, 16))
    for margin in ("well-defined margin", "ill-defined margin"):
        report = make_report(surface_characteristics=margin, ct_value=20.0)
        mask = ProceduralMaskEngine().generate_mask(ctx, box, report, np.random.default_rng(0))
        after = ProceduralTextureEngine().render(ctx, mask, report, np.random.default_rng(0))
        ratio = visible_extent_ratio(ctx.ct, after, mask, ctx.spacing, within=ctx.organ_mask | mask)
        assert 0.9 <= ratio <= 1.1, (margin, ratio)


def test_ring_enhancement_rim_brighter_than_core(real_case, make_report) -> None:
    _, _, _, adh = _synthesize(real_case, LIVER_V2, "liver", make_report(density="ring enhancement", size=(26, 26, 24)), 0)
    assert adh["rim_core_contrast_hu"] > 15.0


@pytest.mark.parametrize("shape", ["round-like", "irregular"])
def test_sizes_within_25_percent_and_inside_organ(real_case, shape: str, make_report) -> None:
    for seed in range(3):
        _, _, _, adh = _synthesize(real_case, LIVER_V2, "liver", make_report(shape=shape, size=(30, 24, 20)), seed)
        assert all(0.75 <= r <= 1.25 for r in adh["size_ratio"]), adh["size_ratio"]
        assert adh["fraction_inside_organ"] == 1.0


@pytest.mark.parametrize("margin", ["well-defined margin", "ill-defined margin"])
def test_ct_unchanged_away_from_the_lesion(real_case, margin: str, make_report) -> None:
    ctx, mask, after, _ = _synthesize(real_case, LIVER_V2, "liver", make_report(surface_characteristics=margin), 1)
    assert after.dtype == np.float32 and after.shape == ctx.ct.shape
    changed = after != ctx.ct
    assert changed[mask].mean() > 0.95
    assert ndimage.distance_transform_edt(~mask)[changed].max() <= 6.0  # mm: blend width plus half a voxel
    assert not (changed & ~mask & ~ctx.organ_mask).any()  # soft margins never spill into neighbours


def test_ill_defined_margin_is_wider_and_centred_on_the_label(generated_case, make_report) -> None:
    """Ill-defined: a wider transition than well-defined, centred on the surface: the label's outer shell is
    part-way to the lesion's density, the organ just outside changed less than half as much as the core."""
    ctx = generated_case.context(LIVER, "liver")
    box = BBox((45, 40, 25), (24, 24, 18))
    report = make_report(density="hypodense lesion", ct_value=None)
    mask = ProceduralMaskEngine().generate_mask(ctx, box, report, np.random.default_rng(0))
    depth = ndimage.distance_transform_edt(mask, sampling=ctx.spacing)
    shell, core = mask & (depth <= 1.5), mask & (depth > 6.0)
    outside = ndimage.binary_dilation(mask, iterations=3) & ~mask
    ratios, spill = [], []
    for margin in ("well-defined margin", "ill-defined margin"):
        after = ProceduralTextureEngine().render(ctx, mask, make_report(surface_characteristics=margin, ct_value=None),
                                                 np.random.default_rng(0))
        delta = ndimage.gaussian_filter(after - ctx.ct, 1.0)  # the mean change, not the new noise
        ratios.append(delta[shell].mean() / delta[core].mean())
        spill.append(np.abs(delta[outside]).mean() / abs(delta[core].mean()))
    assert ratios[1] < ratios[0] - 0.04  # the ill-defined shell is only part-way to the lesion's density
    assert spill[1] > spill[0]  # ... and the ill-defined margin reaches further out
    assert max(spill) < 0.35  # but never a halo: the organ outside stays under half the contrast


def test_seeded_render_identical(real_case, make_report) -> None:
    report = make_report(shape="irregular", density_variations="heterogeneous",
                         specific_features=["presence of decreased density areas"])
    first = _synthesize(real_case, LIVER_V2, "liver", report, 9)[2]
    assert np.array_equal(first, _synthesize(real_case, LIVER_V2, "liver", report, 9)[2])
    assert not np.array_equal(first, _synthesize(real_case, LIVER_V2, "liver", report, 10)[2])


def test_noise_matches_the_organ(generated_case, make_report) -> None:
    ctx = generated_case.context(LIVER, "liver")
    box = BBox((45, 40, 25), (30, 30, 20))
    mask = ProceduralMaskEngine().generate_mask(ctx, box, make_report(), np.random.default_rng(0))
    after = ProceduralTextureEngine().render(ctx, mask, make_report(), np.random.default_rng(0))
    sigma = (2.0, 2.0, 2.0 / 1.5)
    core = ndimage.binary_erosion(mask, iterations=3)
    organ = ndimage.binary_erosion(ctx.organ_mask & ~ndimage.binary_dilation(mask, iterations=3), iterations=2)
    lesion_noise = robust_std((after - ndimage.gaussian_filter(after, sigma))[core])
    organ_noise = robust_std((ctx.ct - ndimage.gaussian_filter(ctx.ct, sigma))[organ])
    assert 0.75 < lesion_noise / organ_noise < 1.33


def test_solid_lung_nodules_carry_the_scans_soft_tissue_noise(make_report, make_case) -> None:
    """A lung's residual is mostly its structure (the shared 3 mm CT: 41-56 HU in the lower lobes, 9 HU in liver
    and spleen); a solid nodule is soft tissue: its noise is the scan's soft tissue's times its own texture
    (SOLID_NODULE_NOISE_GAIN, from LIDC), while ground glass keeps the lung's."""
    from ld_augment.engines.procedural.texture import SOLID_NODULE_NOISE_GAIN

    rng = np.random.default_rng(0)
    shape = (64, 64, 48)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    lung = (grid[0] < 44) & (sum(((g - c) / a) ** 2 for g, c, a in zip(grid[1:], (32, 24), (30, 22))) <= 1.0)
    structure = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    ct = np.where(lung, -820.0 + structure * (45.0 / structure.std()), 40.0 + fine * (8.0 / fine.std()))
    ctx = make_case(ct.astype(np.float32), lung.astype(np.int16), (1.0, 1.0, 1.0)).context(1, "lung_lower_lobe_left")
    ball = sum(((g - c) / 13.0) ** 2 for g, c in zip(grid, (22, 32, 24))) <= 1.0
    sigma = (2.0, 2.0, 2.0)  # the engine's own residual (stats.TREND_MM); the deep core lies 8 mm inside

    def inner_noise(density: str, ct_value: float) -> float:
        report = make_report(density=density, ct_value=ct_value, density_variations="homogeneous", size=(26, 26, 26))
        after = ProceduralTextureEngine().render(ctx, ball, report, np.random.default_rng(1))
        deep = ndimage.binary_erosion(ball, iterations=8)
        return robust_std((after - ndimage.gaussian_filter(after, sigma))[deep])

    soft = robust_std((ct - ndimage.gaussian_filter(ct, sigma))[ndimage.binary_erosion(~lung, iterations=3)])
    lung_noise = robust_std((ct - ndimage.gaussian_filter(ct, sigma))[ndimage.binary_erosion(lung & ~ball, iterations=3)])
    solid = inner_noise("isodense soft tissue mass", 20.0)
    glass = inner_noise("low-density ground-glass opacity", -600.0)
    assert solid == pytest.approx(SOLID_NODULE_NOISE_GAIN * soft, rel=0.3) and solid < 0.5 * lung_noise
    assert glass > 0.6 * lung_noise


def test_fluid_stone_and_hu_range(generated_case, make_report) -> None:
    ctx = generated_case.context(LIVER, "liver")
    box = BBox((45, 40, 25), (24, 24, 16))
    mask = ProceduralMaskEngine().generate_mask(ctx, box, make_report(shape="cystic"), np.random.default_rng(0))
    fluid = ProceduralTextureEngine().render(ctx, mask, make_report(shape="cystic", density="hypodense fluid-like lesion"),
                                             np.random.default_rng(0))
    assert -5.0 <= fluid[mask].mean() <= 25.0
    stone = ProceduralTextureEngine().render(ctx, mask, make_report(specific_features=["stone"]), np.random.default_rng(0))
    assert stone[mask].max() > 250.0
    capped = ProceduralTextureEngine(hu_range=(-1024.0, 100.0)).render(
        ctx, mask, make_report(specific_features=["stone"]), np.random.default_rng(0))
    assert capped[mask].max() <= 100.0


def test_lung_ground_glass_and_bone_lytic_sclerotic(make_report, make_case) -> None:
    shape = (60, 60, 40)
    rng = np.random.default_rng(0)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (30, 30, 20), (26, 26, 18))) <= 1.0
    box = BBox((30, 30, 20), (14, 14, 10))
    for name, organ_hu, density, low, high in [
        ("lung_upper_lobe_left", -850.0, "low-density ground-glass opacity", -720.0, -480.0),
        ("lung_upper_lobe_left", -850.0, "hyperdense lesion", 0.0, 70.0),
        ("vertebrae_L1", 300.0, "hypodense lesion", 0.0, 90.0),
        ("vertebrae_L1", 300.0, "hyperdense lesion", 550.0, 1000.0),
    ]:
        ct = (np.where(organ, organ_hu, -100.0) + 15.0 * rng.standard_normal(shape)).astype(np.float32)
        case = make_case(ct, organ.astype(np.int16), (1.0, 1.0, 1.0))
        ctx = case.context(1, name)
        report = make_report(density=density)
        mask = ProceduralMaskEngine().generate_mask(ctx, box, report, np.random.default_rng(1))
        after = ProceduralTextureEngine().render(ctx, mask, report, np.random.default_rng(1))
        assert low <= after[mask].mean() <= high, (name, density, after[mask].mean())


def test_mass_effect_pushes_unlabelled_tissue_aside(make_report) -> None:
    """A lesion grown out of its organ displaces the fat stripe beside it instead of only overwriting it."""
    from ld_augment.engines.procedural.texture import displace_around

    ct = np.full((60, 60, 40), -100.0, np.float32)  # fat
    ct[:, :, 30:] = 40.0  # a muscle layer above
    grown = np.zeros(ct.shape, bool)
    grid = np.indices(ct.shape)
    grown[(((grid - np.array([30, 30, 20])[:, None, None, None]) ** 2).sum(0)) <= 64] = True  # radius 8
    movable = np.ones(ct.shape, bool)
    movable[:, :, 35:] = False  # a labelled structure beyond the muscle never moves
    out = displace_around(ct, grown, movable, (1.0, 1.0, 1.0))
    column = out[30, 30, :]
    assert ct[30, 30, 30] > 0 > column[30]  # the fat/muscle edge moved up, away from the lesion
    assert np.array_equal(out[..., 35:], ct[..., 35:]) and np.array_equal(out[grown], ct[grown])
    assert np.array_equal(out[:, :, :2], ct[:, :, :2])  # far away nothing changes


def test_renal_cyst_is_darker_than_the_kidney(make_report, make_case) -> None:
    """A "hypodense" cyst in a non-contrast kidney (parenchyma ~25 HU) is fluid below it, not floored at it."""
    shape = (60, 60, 40)
    rng = np.random.default_rng(0)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (30, 30, 20), (26, 22, 18))) <= 1.0
    ct = (np.where(organ, 25.0, -100.0) + 10.0 * rng.standard_normal(shape)).astype(np.float32)
    ctx = make_case(ct, organ.astype(np.int16), (1.0, 1.0, 1.0)).context(1, "kidney_left")
    for seed in range(3):
        report = make_report(shape="cystic", density="hypodense lesion", enhancement_status="non-contrast ct")
        mask = ProceduralMaskEngine().generate_mask(ctx, BBox((30, 30, 20), (16, 16, 14)), report,
                                                    np.random.default_rng(seed))
        after = ProceduralTextureEngine().render(ctx, mask, report, np.random.default_rng(seed))
        quality = lesion_quality(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing, organ_name="kidney_left")
        assert -5.0 <= quality["core_hu"] <= 25.0 - 8.0 and quality["ok"], quality


def test_an_ill_defined_lung_nodule_keeps_its_margin_outwards(make_report, make_case) -> None:
    """A small nodule's blend is capped at half its depth, inwards so its core keeps the requested value; in lung
    the ill-defined margin keeps more of its width outwards (LUNG_MARGIN_OUT_DEPTH_SHARE, into aerated lung)
    unless spiculated (the strands' halos would add up past half contrast). Capped both ways, poorly defined and
    sharp 9-12 mm nodules measured alike on a 3 mm grid (bench_lidc_compare: +0.04 to +0.06 mm on three of four
    seeds, LIDC +0.20)."""
    from ld_augment.engines.procedural.texture import MARGIN_MM

    shape = (40, 40, 40)
    grid = np.indices(shape)
    ball = sum((grid[a] - 20.0) ** 2 for a in range(3)) <= 3.5**2  # 7 mm: depth 3.5 caps the blend at 1.75 mm
    ctx = make_case(np.full(shape, -850.0, np.float32), np.ones(shape, np.int16), (1.0, 1.0, 1.0)).context(
        1, "lung_lower_lobe_left")
    gap = ndimage.distance_transform_edt(~ball)
    near, far = ~ball & (gap <= 1.0), ~ball & (gap > 1.5) & (gap <= 2.5)

    def spill(margin: str, features: tuple[str, ...] = ()) -> tuple[float, float]:
        report = make_report(density="isodense soft tissue mass", surface_characteristics=margin,
                             specific_features=list(features))
        after = ProceduralTextureEngine().render(ctx, ball, report, np.random.default_rng(0))
        delta = after - ctx.ct
        core = float(np.median(delta[ball & (ndimage.distance_transform_edt(ball) > 2)]))
        return float(delta[near].mean()) / core, float(delta[far].mean()) / core

    assert MARGIN_MM["ill"] > 1.75
    ill, well, spiculated = spill("ill-defined margin"), spill("well-defined margin"), spill(
        "ill-defined margin", ("spiculated margins",))
    assert ill[1] > 0.04 and well[1] < 0.01 and spiculated[1] < 0.01, (ill, well, spiculated)
    assert ill[0] > spiculated[0] + 0.05 and ill[0] < 0.5, (ill, spiculated)  # wider, never a halo
