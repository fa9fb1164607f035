"""The per-lesion quality gate: each negative control fails for its own reason, a good lesion passes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ld_augment.engines.procedural import ProceduralMaskEngine, ProceduralTextureEngine
from ld_augment.engines.quality import flat_face_fraction, lesion_quality
from ld_augment.organs.registry import CAVITY_PARENCHYMA
from ld_augment.placement.bboxes import BBox

LIVER = 5
CENTRE = (45, 40, 25)


def _ball(shape, centre, radius_vox) -> np.ndarray:
    grid = np.indices(shape)
    return sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius_vox**2


@pytest.fixture()
def liver(generated_case):
    return generated_case.context(LIVER, "liver")


def _check(ctx, after, mask, report):
    return lesion_quality(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing, organ_name="liver")


def test_good_procedural_lesion_passes(liver, make_report) -> None:
    for seed in range(3):
        report = make_report(ct_value=25.0, size=(20, 20, 14), cavity=CAVITY_PARENCHYMA)
        rng = np.random.default_rng(seed)
        mask = ProceduralMaskEngine().generate_mask(liver, BBox(CENTRE, (20, 20, 14)), report, rng)
        after = ProceduralTextureEngine().render(liver, mask, report, rng)
        quality = _check(liver, after, mask, report)
        assert quality["ok"], quality
        assert abs(quality["core_error_hu"]) <= 20 and quality["flat_face_fraction"] <= 0.15


def test_box_with_a_halo_fails(liver, make_report) -> None:
    """+60 HU axis-aligned box, 45 HU halo beyond its label: flat faces and a half-contrast region too large."""
    box = np.zeros(liver.ct.shape, bool)
    box[37:53, 32:48, 20:31] = True
    halo = ndimage.binary_dilation(box, iterations=3) & ~box & liver.organ_mask
    after = liver.ct + 60.0 * box + 45.0 * halo
    report = make_report(density="hyperdense lesion", ct_value=120.0)
    quality = _check(liver, after, box, report)
    assert not quality["ok"]
    assert quality["flat_face_fraction"] > 0.5 and quality["visible_label_ratio"] > 1.15, quality


def test_invisible_lesion_fails(liver, make_report) -> None:
    mask = _ball(liver.ct.shape, CENTRE, 8)
    quality = _check(liver, liver.ct.copy(), mask, make_report(ct_value=30.0))  # a label, no contrast
    assert not quality["ok"] and any("density below" in f for f in quality["failures"]), quality
    assert any("requested" in f for f in quality["failures"])  # and the core is 30 HU off the request


def test_fat_core_fails(liver, make_report) -> None:
    mask = _ball(liver.ct.shape, CENTRE, 8)
    after = np.where(mask, -90.0, liver.ct).astype(np.float32)  # a "hypodense" tumour with a fat core
    quality = _check(liver, after, mask, make_report(ct_value=30.0))
    assert not quality["ok"] and quality["foreign_fraction"] > 0.5, quality


def test_floating_lesion_fails(liver, make_report) -> None:
    centre = (45 + 36, 40, 25)  # on the organ's +x surface: most of the ball lies in the fat outside
    mask = _ball(liver.ct.shape, centre, 7)
    after = np.where(mask, 25.0 + 5 * np.random.default_rng(0).standard_normal(mask.shape), liver.ct)
    quality = _check(liver, after.astype(np.float32), mask, make_report(ct_value=25.0, cavity=CAVITY_PARENCHYMA))
    assert not quality["ok"] and quality["fraction_inside_organ"] < 0.8, quality


def test_flat_face_fraction_separates_cut_from_curved() -> None:
    shape = (40, 40, 40)
    for radius in (5, 8, 12):
        assert flat_face_fraction(_ball(shape, (19.6, 20.3, 19.8), radius)) <= 0.1
        cut = _ball(shape, (20, 20, 20), radius) & (np.indices(shape)[0] <= 20 + int(0.75 * radius))
        assert flat_face_fraction(cut) > 0.15
