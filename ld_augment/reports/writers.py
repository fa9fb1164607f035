"""The report-writer interface and what every writer shares: user overrides and the organ-extent clamp.

A writer turns (organ, lesion type, organ extent) into a vocabulary-valid report. Two exist: the offline
sampler (default, deterministic, no network) and the LLM writer. Both finish through ``finalize_report``, so
the guarantees -- user attributes win, sizes never exceed the organ's bbox, values are canonical, cavity
matches the organ kind -- hold whichever wrote the report.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

from ld_augment.errors import ConfigError
from ld_augment.reports._organs import cavities_for, resolve_organ
from ld_augment.reports.model import CAVITY, CT_VALUE, SHAPE, SIZE, LesionReport, Vec3, new_report
from ld_augment.reports.vocabulary import Vocabulary, canonical_attribute, load_vocabulary, normalize_report

log = logging.getLogger(__name__)

_NUMBER = r"\d+(?:\.\d+)?"


class ReportWriter(ABC):
    """Writes the structured report of a lesion to synthesize."""

    name: str = "writer"

    @abstractmethod
    def write(self, *, organ: str, lesion_type: str, organ_extent: tuple[int, int, int],
              overrides: Mapping[str, str] | None = None, seed: int = 0, num_lesions: int = 1) -> LesionReport:
        """A normalized report for ``num_lesions`` lesions of ``lesion_type`` in ``organ``.

        ``organ_extent`` is the organ's bbox size in standardized voxels; no lesion size exceeds it.
        The bbox centres are left empty for placement to fill.
        """


def parse_size_override(text: str) -> Vec3:
    """A user size: "20x18x15", "20 18 15", "[[20 18 15]] pixel" or a single number for a cube."""
    numbers = re.findall(_NUMBER, str(text))
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3 or any(float(n) <= 0 for n in numbers):
        raise ConfigError(f"size {text!r} must be three positive voxel counts, e.g. '20x18x15'")
    return (round(float(numbers[0])), round(float(numbers[1])), round(float(numbers[2])))


def parse_ct_override(text: str) -> float:
    match = re.search(r"-?" + _NUMBER, str(text))
    if match is None:
        raise ConfigError(f"CT value {text!r} must be a number in HU, e.g. '45'")
    return float(match.group(0))


def normalize_overrides(overrides: Mapping[str, Any] | None, organ: str | int,
                        vocabulary: Vocabulary | None = None) -> dict[str, Any]:
    """User attributes as typed values keyed by report attribute; unknown names/values are a ConfigError.

    Checked before any sampling or network call, so a typo fails at once and names the allowed values.
    """
    vocab = vocabulary or load_vocabulary()
    out: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        key = canonical_attribute(name)
        if key == SIZE:
            out[key] = parse_size_override(value)
        elif key == CT_VALUE:
            out[key] = parse_ct_override(value)
        else:
            items = vocab.normalize_items(key, value)
            if key == CAVITY and items and items[0] not in cavities_for(organ):
                raise ConfigError(
                    f"cavity {items[0]!r} does not apply to {resolve_organ(organ)[1]}; allowed: "
                    + "; ".join(repr(c) for c in cavities_for(organ))
                )
            out[key] = items if key == "specific features" else ",".join(items)
    return out


def clamp_size(size: Sequence[int], extent: Sequence[int]) -> Vec3:
    """Each axis within [1, organ extent]: a lesion box never exceeds the organ's box."""
    return tuple(int(max(1, min(int(s), int(e)))) for s, e in zip(size, extent))  # type: ignore[return-value]


def check_request(organ: str, organ_extent: Sequence[int], num_lesions: int) -> tuple[int, str]:
    """Validate the common arguments; returns (v1 id, organ name)."""
    organ_id, name = resolve_organ(organ)
    if len(organ_extent) != 3 or any(int(e) < 1 for e in organ_extent):
        raise ConfigError(f"organ_extent must be three positive voxel counts, got {tuple(organ_extent)!r}")
    if int(num_lesions) < 1:
        raise ConfigError(f"num_lesions must be >= 1, got {num_lesions}")
    return organ_id, name


_FIELD_OF_KEY = {
    "enhancement status": "enhancement_status", SHAPE: "shape", "density": "density",
    "density variations": "density_variations", CT_VALUE: "ct_value",
    "surface characteristics": "surface_characteristics", "relationship with adjacent organs": "relationship",
    "specific features": "specific_features", CAVITY: "cavity",
}


def finalize_report(*, organ: str, organ_extent: Sequence[int], values: Mapping[str, Any],
                    sizes: Sequence[Sequence[int]], overrides: Mapping[str, Any]) -> LesionReport:
    """Apply normalized overrides, clamp sizes to the organ extent, build and normalize the report.

    ``values`` and ``overrides`` are keyed by report attribute (typed: size tuple, CT float, features list).
    A user size replaces every lesion's size; a size larger than the organ is clamped with a warning.
    """
    organ_id, name = resolve_organ(organ)
    merged = {**values, **overrides}
    if SIZE in overrides:
        sizes = [overrides[SIZE]] * len(sizes)
    clamped = [clamp_size(s, organ_extent) for s in sizes]
    if SIZE in overrides and clamped[0] != tuple(overrides[SIZE]):
        log.warning("requested lesion size %s exceeds the %s extent %s; clamped to %s",
                    tuple(overrides[SIZE]), name, tuple(organ_extent), clamped[0])
    merged.pop(SIZE, None)
    typed = {_FIELD_OF_KEY[k]: v for k, v in merged.items() if k in _FIELD_OF_KEY}
    return normalize_report(new_report(organ_id, typed, clamped))

