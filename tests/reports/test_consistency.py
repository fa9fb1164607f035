"""Contradictory reports are resolved to the nearest consistent one, and every change is noted."""

from __future__ import annotations

from ld_augment.reports.consistency import resolve_contradictions
from ld_augment.reports.model import LesionReport

LIVER = 5


def _report(**values) -> LesionReport:
    base = {"enhancement_status": "enhanced ct", "shape": "round-like", "density": "hypodense lesion",
            "size": (12, 12, 12)}
    base.update(values)
    return LesionReport(organ_id=LIVER).with_values(**base).with_bboxes([(20, 20, 20)], [base["size"]])


def test_consistent_report_is_unchanged() -> None:
    report = _report()
    resolved, notes = resolve_contradictions(report)
    assert notes == [] and resolved == report


def test_ring_enhancement_on_a_non_contrast_scan_becomes_hypodense() -> None:
    resolved, notes = resolve_contradictions(_report(enhancement_status="non-contrast ct", density="ring enhancement"))
    assert resolved.density == "hypodense lesion" and len(notes) == 1 and "non-contrast" in notes[0]
    kept, none = resolve_contradictions(_report(density="ring enhancement"))  # enhanced: the ring stays
    assert kept.density == "ring enhancement" and none == []


def test_large_punctate_lesion_becomes_round() -> None:
    resolved, notes = resolve_contradictions(_report(shape="punctate", size=(23, 22, 20)))
    assert resolved.shape == "round-like" and "23 mm" in notes[0]
    small, none = resolve_contradictions(_report(shape="punctate", size=(6, 6, 6)))
    assert small.shape == "punctate" and none == []
    # the sizes count in the standardized grid's voxels: 8 voxels of 1.5 mm are 12 mm
    _, notes = resolve_contradictions(_report(shape="punctate", size=(8, 8, 8)), spacing=(1.5, 1.5, 1.5))
    assert notes


def test_narrowing_of_a_collapsed_organ_becomes_wall_thickening() -> None:
    report = LesionReport(organ_id=6).with_values(enhancement_status="enhanced ct", shape="luminal narrowing",
                                                  density="isodense lesion", size=(20, 20, 20))
    resolved, notes = resolve_contradictions(report, has_lumen=False)
    assert resolved.shape == "irregular wall thickening" and "lumen" in notes[0]
    assert resolve_contradictions(report, has_lumen=True)[1] == []
