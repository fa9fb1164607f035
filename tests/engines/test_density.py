"""Density physics: parenchyma reference (not fat), per-type HU bounds, contrast phase from the aorta."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.engines.attributes import LesionSpec
from ld_augment.engines.procedural.density import (
    FLUID_HU, MIN_CONTRAST_HU, SOLID_MIN_HU, aorta_mask, bound_lesion_hu, infer_contrast_phase, lesion_hu, parenchyma_hu, phase_of,
)

PANCREAS_V2, AORTA_V2 = 7, 52


@pytest.mark.needs_shared
def test_real_pancreas_reference_is_parenchyma_not_fat(real_ct: Path, real_seg: Path) -> None:
    ct = np.asarray(nib.load(str(real_ct)).dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(real_seg)).dataobj)
    values = ct[seg == PANCREAS_V2]
    assert np.median(values) < 0  # the 3 mm pancreas is half fat / partial volume
    assert 20 <= parenchyma_hu(values, "pancreas") <= 60  # non-contrast pancreatic parenchyma
    assert infer_contrast_phase(ct, aorta_mask(seg, "v2")) == "non-contrast ct"  # aorta ~43 HU


def test_phase_from_aorta_and_report_text() -> None:
    ct = np.full((10, 10, 10), 180.0, np.float32)
    aorta = np.zeros(ct.shape, bool)
    aorta[2:6, 2:6, 2:6] = True
    assert infer_contrast_phase(ct, aorta) == "enhanced ct"
    assert infer_contrast_phase(ct, np.zeros_like(aorta)) is None and infer_contrast_phase(ct, None) is None
    assert aorta_mask(np.ones((4, 4, 4), np.uint8), "binary") is None
    assert phase_of("non-contrast ct,") == "non-contrast ct" and phase_of("enhanced ct") == "enhanced ct"
    assert phase_of(None) is None


def test_solid_tumours_above_water_unless_the_density_word_forbids_it() -> None:
    """A solid tumour stays above fat/water density, except where that floor would make a "hypodense" lesion
    as dense as its organ: there the density word wins (it sits below the parenchyma)."""
    rng = np.random.default_rng(0)
    hypo = LesionSpec(density="hypo")
    for organ_hu in (30.0, 45.0, 60.0):
        for phase in ("non-contrast ct", "enhanced ct", None):
            hu = lesion_hu(hypo, organ_hu, "pancreas", phase, rng)
            assert SOLID_MIN_HU <= hu <= organ_hu - MIN_CONTRAST_HU, (organ_hu, phase, hu)
    for organ_hu in (-20.0, 10.0, 20.0):  # a fatty / unusual organ: still below it, never above
        assert lesion_hu(hypo, organ_hu, "pancreas", "non-contrast ct", rng) <= organ_hu - MIN_CONTRAST_HU
    assert bound_lesion_hu(hypo, -40.0, "kidney_left", rng) >= SOLID_MIN_HU
    assert bound_lesion_hu(hypo, -40.0, "kidney_left", rng, organ_hu=60.0) >= SOLID_MIN_HU
    fluid = LesionSpec(density="fluid", shape="cystic")
    assert 0.0 <= bound_lesion_hu(fluid, -30.0, "kidney_left", rng) <= 20.0
    assert bound_lesion_hu(LesionSpec(density="hypo"), -60.0, "vertebrae_T12", rng) == -60.0  # bone: not "solid"


def test_cysts_are_fluid_and_darker_than_the_parenchyma() -> None:
    rng = np.random.default_rng(2)
    fluid = LesionSpec(density="fluid", shape="cystic")
    for organ_hu in (20.0, 25.0, 45.0, 110.0):  # non-contrast kidney (3 mm) ... enhanced liver
        values = [lesion_hu(fluid, organ_hu, "kidney_left", "non-contrast ct", rng) for _ in range(30)]
        assert min(values) >= -5.0 and max(values) <= min(FLUID_HU[1], organ_hu - MIN_CONTRAST_HU)
    # a "hypodense" cyst at 24 HU in a 23 HU kidney (the old floor) is moved into the fluid range below it
    assert bound_lesion_hu(fluid, 24.0, "kidney_left", rng, organ_hu=23.0) <= 15.0


def test_lung_density_words_set_the_hu() -> None:
    """Solid vs ground glass about +500 HU apart (LIDC 13 mm+: +36 vs ~-575 HU), part-solid between."""
    rng = np.random.default_rng(3)
    draw = lambda density: np.median([lesion_hu(LesionSpec(density=density, size=(16, 15, 14)), -850.0,  # noqa: E731
                                                "lung_lower_lobe_left", None, rng) for _ in range(40)])
    solid, ggo, part = draw("soft_tissue"), draw("ground_glass"), draw("soft_tissue_ggo")
    assert -10 <= solid <= 70 and -700 <= ggo <= -450 and solid - ggo > 350
    assert ggo < part <= solid + 10


def test_contrast_to_the_organ_follows_the_phase() -> None:
    rng = np.random.default_rng(1)
    hypo = LesionSpec(density="hypo")
    plain = [60 - lesion_hu(hypo, 60.0, "liver", "non-contrast ct", rng) for _ in range(50)]
    enhanced = [110 - lesion_hu(hypo, 110.0, "liver", "enhanced ct", rng) for _ in range(50)]
    assert 10 <= min(plain) and max(plain) <= 25 and np.median(enhanced) > np.median(plain) + 10


def test_ring_enhancing_lesion_has_a_hypodense_core() -> None:
    """A rim-enhancing metastasis's core is below the liver (the rim is added around it), not isodense: the audit
    found ring metastases at 102-106 HU in a 105 HU enhanced liver, invisible but for the rim."""
    rng = np.random.default_rng(2)
    ring = LesionSpec(density="ring")
    typed = [lesion_hu(ring, 105.0, "liver", "enhanced ct", rng, contrast=(-80.0, -15.0)) for _ in range(30)]
    generic = [lesion_hu(ring, 105.0, "liver", "enhanced ct", rng) for _ in range(30)]
    assert max(typed) <= 105.0 - 15.0 and max(generic) <= 105.0 - MIN_CONTRAST_HU
