"""The calibrated writer draws real lesions' size, density, margin, heterogeneity and shape; priors are the fallback."""

from __future__ import annotations

import numpy as np
import pytest

from ld_augment.errors import ConfigError
from ld_augment.reports.calibrated import CalibratedReportWriter
from ld_augment.reports.offline import OfflineReportWriter

SMALL_BRIGHT = {"diameter_mm": 6.0, "core_hu": 120.0, "contrast_hu": 60.0, "margin_width_mm": 1.0,
                "heterogeneity_ratio": 1.0, "sphericity": 0.9, "convexity": 0.95}
LARGE_DARK = {"diameter_mm": 30.0, "core_hu": 10.0, "contrast_hu": -50.0, "margin_width_mm": 6.0,
              "heterogeneity_ratio": 2.5, "sphericity": 0.7, "convexity": 0.7}
EXTENT = (120, 100, 90)


def _diameter(report) -> float:
    return float(np.prod(report.size) ** (1 / 3))


def test_report_describes_the_drawn_real_lesion() -> None:
    writer = CalibratedReportWriter({"liver|*": [SMALL_BRIGHT]})
    r = writer.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=3)
    assert r.ct_value == 120.0
    assert "hyperdense" in r.density
    assert "well-defined" in r.surface_characteristics
    assert r.density_variations == "homogeneous" and r.shape == "round-like"
    assert _diameter(r) == pytest.approx(6.0, rel=0.3)  # no 9 mm clinical floor: real small lesions stay small
    w2 = CalibratedReportWriter({"liver|*": [LARGE_DARK]})
    r2 = w2.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=3)
    assert "hypodense" in r2.density and "ill-defined" in r2.surface_characteristics
    assert r2.density_variations == "heterogeneous" and r2.shape == "irregular"
    assert _diameter(r2) == pytest.approx(30.0, rel=0.3)


def test_sizes_follow_the_real_distribution() -> None:
    rows = [dict(SMALL_BRIGHT, diameter_mm=d) for d in (4.0, 5.0, 6.0, 7.0, 30.0)]
    writer = CalibratedReportWriter({"*|*": rows})
    sizes = [_diameter(writer.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=s))
             for s in range(60)]
    assert 4.0 <= np.median(sizes) <= 7.5
    offline = [_diameter(OfflineReportWriter().write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT,
                                                     seed=s)) for s in range(60)]
    assert np.median(offline) > 10.0  # the priors' metastasis is larger: calibration changed the draw


def test_lung_words_follow_the_core_hu_and_convexity() -> None:
    ggo = dict(SMALL_BRIGHT, core_hu=-600.0, contrast_hu=250.0, convexity=0.6)
    solid = dict(SMALL_BRIGHT, core_hu=30.0, contrast_hu=850.0, convexity=0.95)
    r = CalibratedReportWriter({"lung|lung nodule": [ggo]}).write(organ="lung_upper_lobe_left", lesion_type="lung nodule",
                                                                   organ_extent=EXTENT, seed=0)
    assert "ground-glass" in r.density and "spiculated margins" in r.specific_features
    r = CalibratedReportWriter({"*|lung nodule": [solid]}).write(organ="lung_upper_lobe_left", lesion_type="lung nodule",
                                                                  organ_extent=EXTENT, seed=0)
    assert r.density == "isodense soft tissue mass" and "spiculated margins" not in r.specific_features


def test_priors_are_the_fallback_and_user_attributes_win() -> None:
    writer = CalibratedReportWriter({"liver|*": [SMALL_BRIGHT]})
    kidney = writer.write(organ="kidney_left", lesion_type="renal cell carcinoma", organ_extent=EXTENT, seed=5)
    offline = OfflineReportWriter().write(organ="kidney_left", lesion_type="renal cell carcinoma", organ_extent=EXTENT,
                                          seed=5)
    assert kidney.to_entry() == offline.to_entry()
    r = writer.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=3,
                     overrides={"density": "hypodense lesion", "CT value": "20"})
    assert "hypodense" in r.density and r.ct_value == 20.0
    assert writer.provenance()["lesions"]["liver|*"]["n"] == 1
    with pytest.raises(ConfigError, match="organ|lesion type"):
        CalibratedReportWriter({"liver": [SMALL_BRIGHT]})


def test_deterministic_given_the_seed() -> None:
    writer = CalibratedReportWriter({"*|*": [SMALL_BRIGHT, LARGE_DARK]})
    a = writer.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=11, num_lesions=3)
    b = writer.write(organ="liver", lesion_type="metastasis", organ_extent=EXTENT, seed=11, num_lesions=3)
    assert a.to_entry() == b.to_entry()


def test_requested_shape_words_draw_agreeing_real_lesions() -> None:
    """A user's "spiculated" nodule comes from the real spiculated ones (with their size), a "round-like" one from
    the round ones; without shape words any real lesion is drawn."""
    writer = CalibratedReportWriter({"lung|*": [SMALL_BRIGHT, LARGE_DARK]})

    def diameters(overrides) -> list[float]:
        return [_diameter(writer.write(organ="lung_lower_lobe_left", lesion_type="lung nodule", organ_extent=EXTENT,
                                       overrides=overrides, seed=s)) for s in range(12)]

    assert min(diameters({"specific features": "spiculated margins"})) > 20.0
    assert max(diameters({"shape": "round-like"})) < 10.0
    mixed = diameters({})
    assert min(mixed) < 10.0 < max(mixed)
