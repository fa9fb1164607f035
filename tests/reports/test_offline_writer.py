"""The offline writer: seeded determinism, vocabulary-valid values, organ-aware sizes and cavities."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ld_augment.errors import ConfigError
from ld_augment.reports import OfflineReportWriter, load_vocabulary, normalize_report
from ld_augment.reports.priors import GENERIC, PROFILES, SURFACE_PHRASES, profile_for
from ld_augment.reports.registry import report_writer_class

HOLLOW_CAVITIES = {"within the lumen of a hollow organ", "wall thickening"}
SOLID_CAVITIES = {"within the parenchymal organ", "protruding from the parenchymal organ"}
REQUESTS = [
    ("liver", "hepatocellular carcinoma", (160, 130, 110)),
    ("kidney_left", "renal cell carcinoma", (60, 55, 90)),
    ("urinary bladder", "bladder cancer", (70, 60, 50)),
    ("gallbladder", "stone", (30, 25, 40)),
    ("pancreas", "cyst", (110, 40, 30)),
    ("spleen", "metastasis", (12, 9, 14)),
    ("esophagus", "esophageal cancer", (20, 20, 200)),
    ("liver", "something never seen before", (160, 130, 110)),
]


def test_registry_names_the_same_class() -> None:
    assert report_writer_class("offline") is OfflineReportWriter


@pytest.mark.parametrize("organ, lesion_type, extent", REQUESTS)
def test_same_seed_same_report_other_seed_other_report(organ, lesion_type, extent) -> None:
    writer = OfflineReportWriter()
    first = writer.write(organ=organ, lesion_type=lesion_type, organ_extent=extent, overrides=None, seed=7)
    again = OfflineReportWriter().write(organ=organ, lesion_type=lesion_type, organ_extent=extent, seed=7)
    assert first.to_entry() == again.to_entry()
    others = {tuple(sorted(writer.write(organ=organ, lesion_type=lesion_type, organ_extent=extent,
                                        seed=s).attributes.items())) for s in range(8)}
    assert len(others) > 1


@pytest.mark.parametrize("organ, lesion_type, extent", REQUESTS)
def test_reports_respect_vocabulary_extent_and_cavity_over_many_seeds(organ, lesion_type, extent) -> None:
    writer = OfflineReportWriter()
    hollow = organ.replace("_", " ") in {"urinary bladder", "gallbladder", "esophagus"}
    for seed in range(60):
        report = writer.write(organ=organ, lesion_type=lesion_type, organ_extent=extent, seed=seed, num_lesions=3)
        assert normalize_report(report) == report  # already canonical
        assert len(report.bbox_sizes) == 3 and report.bbox_centers == []
        assert report.size == report.bbox_sizes[0]
        for size in report.bbox_sizes:
            assert all(1 <= s <= e for s, e in zip(size, extent)), (seed, size, extent)
        assert report.cavity in (HOLLOW_CAVITIES if hollow else SOLID_CAVITIES)
        assert report.attributes["lesion location"] == str(report.organ_id)
        assert report.ct_value is not None and -1024 <= report.ct_value <= 3071
        if not hollow:
            assert report.shape not in {"irregular wall thickening", "luminal narrowing", "protrusion into the lumen"}


def _diameters_mm(writer, organ, lesion_type, extent, n=80) -> np.ndarray:
    sizes = [writer.write(organ=organ, lesion_type=lesion_type, organ_extent=extent, seed=s).size for s in range(n)]
    return np.array([np.prod(np.asarray(sz) * writer.spacing) ** (1 / 3) for sz in sizes])


def test_sizes_follow_the_clinical_prior_in_mm() -> None:
    big = (160, 130, 110)
    hcc = _diameters_mm(OfflineReportWriter(), "liver", "hepatocellular carcinoma", big)
    prior = profile_for("hepatocellular carcinoma").size
    assert 0.75 * prior.median_mm < np.median(hcc) < 1.3 * prior.median_mm
    assert hcc.min() >= prior.low_mm - 1 and hcc.max() <= prior.high_mm + 1
    rcc = _diameters_mm(OfflineReportWriter(), "kidney_left", "renal cell carcinoma", (60, 60, 110))
    assert np.median(rcc) >= 25  # not a fraction of the kidney's smallest side any more
    # the same mm on a 2 mm standardized grid: half the voxels
    coarse = _diameters_mm(OfflineReportWriter(spacing=(2.0, 2.0, 2.0)), "liver", "hepatocellular carcinoma",
                           (80, 65, 55))
    assert abs(np.median(coarse) - np.median(hcc)) < 0.2 * np.median(hcc)


def test_floor_and_organ_cap() -> None:
    floored = _diameters_mm(OfflineReportWriter(min_diameter_mm=12.0), "liver", "metastasis", (160, 130, 110))
    assert floored.min() >= 11.0  # rounding to voxels and axis jitter keep it within a voxel
    small = _diameters_mm(OfflineReportWriter(), "liver", "cyst", (20, 20, 20))
    assert small.max() <= 20  # each axis clamped to the organ (an exophytic cyst may reach past 0.8 of it)
    tiny = OfflineReportWriter().write(organ="spleen", lesion_type="tumor", organ_extent=(2, 5, 1), seed=3)
    assert all(s <= e for s, e in zip(tiny.size, (2, 5, 1)))


def test_hollow_shapes_never_paired_with_an_impossible_cavity() -> None:
    writer = OfflineReportWriter()
    for seed in range(60):
        report = writer.write(organ="stomach", lesion_type="gastric cancer", organ_extent=(80, 70, 60), seed=seed)
        if report.cavity == "within the lumen of a hollow organ":
            assert report.shape not in {"irregular wall thickening", "luminal narrowing"}, seed


def test_same_seed_differs_across_organs() -> None:
    writer = OfflineReportWriter()
    a = writer.write(organ="liver", lesion_type="metastasis", organ_extent=(100, 100, 100), seed=5)
    b = writer.write(organ="spleen", lesion_type="metastasis", organ_extent=(100, 100, 100), seed=5)
    assert a.size != b.size or a.attributes != b.attributes


def test_lesion_type_shapes_the_report() -> None:
    writer = OfflineReportWriter()
    stones = [writer.write(organ="gallbladder", lesion_type="Gallbladder stone", organ_extent=(30, 30, 40), seed=s)
              for s in range(20)]
    assert all(r.density == "hyperdense lesion" and r.specific_features == ["stone"] for r in stones)
    assert all(r.ct_value >= 200 for r in stones)
    assert all(r.cavity == "within the lumen of a hollow organ" or r.cavity == "wall thickening" for r in stones)
    cysts = [writer.write(organ="kidney right", lesion_type="renal cyst", organ_extent=(60, 60, 90), seed=s)
             for s in range(20)]
    assert all(r.ct_value <= 20 for r in cysts)
    assert {r.surface_characteristics for r in cysts} <= set(SURFACE_PHRASES["kidney"].values())
    assert profile_for("unheard-of lesion") is GENERIC


def test_overrides_win_and_are_normalized(caplog) -> None:
    writer = OfflineReportWriter()
    overrides = {"density": "hypodense", "density_variations": "Homogeneous,", "specific features": "calculus",
                 "CT value": "12", "size": "10x12x8", "cavity": "protruding from the parenchymal organ"}
    for seed in range(10):
        report = writer.write(organ="liver", lesion_type="hepatocellular carcinoma", organ_extent=(100, 100, 100),
                              overrides=overrides, seed=seed, num_lesions=2)
        assert report.density == "hypodense lesion" and report.density_variations == "homogeneous"
        assert report.specific_features == ["stone"] and report.ct_value == 12.0
        assert report.bbox_sizes == [(10, 12, 8), (10, 12, 8)]
        assert report.cavity == "protruding from the parenchymal organ"
    with caplog.at_level(logging.WARNING):
        clamped = writer.write(organ="liver", lesion_type="cyst", organ_extent=(30, 40, 50), overrides={"size": "60"},
                               seed=0)
    assert clamped.size == (30, 40, 50) and "clamped" in caplog.text


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"overrides": {"density": "glowing"}}, "allowed"),
        ({"overrides": {"colour": "red"}}, "settable attributes"),
        ({"overrides": {"cavity": "wall thickening"}}, "does not apply to liver"),
        ({"overrides": {"size": "big"}}, "three positive"),
        ({"organ": "heartbeat"}, "unknown organ"),
        ({"organ": "kidney"}, "several classes"),
        ({"organ_extent": (10, 0, 10)}, "organ_extent"),
        ({"num_lesions": 0}, "num_lesions"),
    ],
)
def test_bad_requests_are_config_errors(kwargs, problem) -> None:
    request = {"organ": "liver", "lesion_type": "cyst", "organ_extent": (50, 50, 50), "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=problem):
        OfflineReportWriter().write(**request)


def test_priors_use_only_canonical_vocabulary_values() -> None:
    vocab = load_vocabulary()
    for profile in (*PROFILES, GENERIC):
        for attribute, choices in (("shape", profile.shape), ("density", profile.density),
                                   ("density variations", profile.density_variations)):
            assert set(choices) <= set(vocab.allowed(attribute)), (profile.name, attribute)
        assert set(profile.features) - {""} <= set(vocab.allowed("specific features")), profile.name
        for weights in profile.cavity.values():
            assert set(weights) <= set(vocab.allowed("cavity")), profile.name
    for phrases in SURFACE_PHRASES.values():
        assert set(phrases.values()) <= set(vocab.allowed("surface characteristics"))


def test_protruding_lesions_may_outgrow_the_organs_thinnest_extent() -> None:
    """A pancreas 20 mm thick holds a 16 mm lesion inside it, but an exophytic mass grows past its contour."""
    writer, extent = OfflineReportWriter(), (120, 20, 40)
    diameters = {}
    for cavity in ("within the parenchymal organ", "protruding from the parenchymal organ"):
        sizes = [writer.write(organ="pancreas", lesion_type="pancreatic tumor", organ_extent=extent, seed=s,
                              overrides={"cavity": cavity}).size for s in range(40)]
        diameters[cavity] = [float(np.prod(size)) ** (1 / 3) for size in sizes]
    assert max(diameters["within the parenchymal organ"]) <= 0.8 * 20 * 1.2      # axis jitter around the cap
    assert np.median(diameters["protruding from the parenchymal organ"]) > np.median(
        diameters["within the parenchymal organ"]) + 2
