"""Resolve reports that contradict themselves or the scan, and say what was changed.

A report writer (offline or an LLM) does not see the CT, so it can ask for what this scan cannot show: ring
enhancement on a non-contrast scan, a 23 mm "punctate" lesion, a "luminal narrowing" of a collapsed stomach
that has no lumen. Rendering those teaches a segmenter contradictions; refusing the whole case wastes it. Each
rule below replaces the offending value with the nearest consistent one and returns a note; the pipeline
records the notes (case.json and synthesis.json), so nothing is changed silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from ld_augment.reports.model import LesionReport

#: Largest diameter (mm) a "punctate" lesion may have (the procedural engine's punctate cap).
PUNCTATE_MAX_MM = 10.0


def _is_non_contrast(report: LesionReport) -> bool:
    text = (report.enhancement_status or "").lower()
    return "non" in text or "plain" in text or "unenhanced" in text


def _replace_shape_item(shape: str, old: Sequence[str], new: str) -> str:
    items = [item.strip() for item in shape.split(",") if item.strip()]
    out = [new if item in old else item for item in items]
    return ",".join(dict.fromkeys(out))  # no duplicate after the replacement


def resolve_contradictions(report: LesionReport, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                           has_lumen: bool = True) -> tuple[LesionReport, list[str]]:
    """``report`` with contradictions resolved, and one note per change (empty list: nothing changed).

    ``spacing`` converts the report's box sizes (standardized voxels) to mm; ``has_lumen`` is False for a
    hollow organ whose segmentation holds no lumen (collapsed), where a narrowing cannot be shown.
    """
    notes: list[str] = []
    density = (report.density or "").lower()
    if _is_non_contrast(report) and "ring" in density:
        report = report.with_values(density="hypodense lesion")
        notes.append("ring enhancement on a non-contrast scan: rendered as 'hypodense lesion'")
    shape = (report.shape or "").lower()
    sizes = list(report.bbox_sizes) or ([report.size] if report.size else [])
    if sizes and ("punctate" in shape or "nodular" in shape):
        largest = max(float(s) * float(z) for size in sizes for s, z in zip(size, spacing))
        if largest > PUNCTATE_MAX_MM:
            shape = _replace_shape_item(shape, ("punctate", "nodular"), "round-like")
            report = report.with_values(shape=shape)
            notes.append(f"'punctate' with a {largest:.0f} mm box (> {PUNCTATE_MAX_MM:.0f} mm): shape 'round-like'")
    if "luminal narrowing" in shape and not has_lumen:
        shape = _replace_shape_item(shape, ("luminal narrowing",), "irregular wall thickening")
        report = report.with_values(shape=shape)
        notes.append("'luminal narrowing' of an organ without a lumen (collapsed): 'irregular wall thickening'")
    return report, notes
