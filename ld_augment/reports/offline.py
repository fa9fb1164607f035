"""The offline report writer (default): samples a vocabulary-consistent report, no network, seeded.

It lets the whole pipeline run on a fresh machine and makes banks reproducible: the same request and seed
give the same report. Sizes scale with the organ (a fraction of its bbox, capped in voxels), so a
gallbladder gets small lesions and a liver larger ones, and never exceed the organ's bbox.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ld_augment.reports._organs import default_cavity, is_hollow
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, DENSITY_VARIATIONS, ENHANCEMENT, RELATIONSHIP, SHAPE, SPECIFIC_FEATURES, SURFACE,
    LesionReport, Vec3,
)
from ld_augment.reports.priors import HOLLOW_ONLY_SHAPES, SURFACE_PHRASES, LesionProfile, profile_for, surface_family
from ld_augment.reports.writers import ReportWriter, check_request, finalize_report, normalize_overrides

MIN_SIZE = 3  # voxels per axis: smaller boxes hold no recognisable lesion (unless the organ is smaller)
SIZE_JITTER = 0.15  # per-axis relative spread around a lesion's base size (lesions are not cubes)


def _choose(rng: np.random.Generator, choices: Mapping[str, float]) -> str:
    values = list(choices)
    weights = np.asarray([choices[v] for v in values], dtype=float)
    return values[int(rng.choice(len(values), p=weights / weights.sum()))]


def sample_size(rng: np.random.Generator, profile: LesionProfile, organ_extent: tuple[int, int, int]) -> Vec3:
    """One lesion box: a fraction of the organ's smallest extent, jittered per axis, within [3, extent].

    The smallest axis, not the median: a box must fit *inside* the organ (placement's parenchyma rule), and
    an organ's bbox is far larger than the boxes it contains (a liver fills about a third of its bbox).
    """
    extent = np.asarray(organ_extent, dtype=float)
    base = float(extent.min()) * rng.uniform(*profile.size_fraction)
    base = min(base, float(profile.max_size))
    axes = base * rng.uniform(1.0 - SIZE_JITTER, 1.0 + SIZE_JITTER, size=3)
    lower = np.minimum(MIN_SIZE, extent)
    size = np.clip(np.rint(axes), lower, extent).astype(int)
    return (int(size[0]), int(size[1]), int(size[2]))


class OfflineReportWriter(ReportWriter):
    """Samples attributes from lesion-type priors (see ``priors.py``); deterministic given the seed.

    ``contrast_probability`` is the chance of "enhanced ct" (most diagnostic abdominal CT is contrast-enhanced).
    """

    name = "offline"

    def __init__(self, *, contrast_probability: float = 0.8) -> None:
        self.contrast_probability = float(contrast_probability)

    def write(self, *, organ: str, lesion_type: str, organ_extent: tuple[int, int, int],
              overrides: Mapping[str, str] | None = None, seed: int = 0, num_lesions: int = 1) -> LesionReport:
        organ_id, name = check_request(organ, organ_extent, num_lesions)
        user = normalize_overrides(overrides, organ_id)
        rng = np.random.default_rng(seed)
        profile = profile_for(lesion_type)
        extent = (int(organ_extent[0]), int(organ_extent[1]), int(organ_extent[2]))
        values = self._sample_attributes(rng, profile, name)
        sizes = [sample_size(rng, profile, extent) for _ in range(int(num_lesions))]
        return finalize_report(organ=name, organ_extent=extent, values=values, sizes=sizes, overrides=user)

    def _sample_attributes(self, rng: np.random.Generator, profile: LesionProfile, organ_name: str) -> dict[str, Any]:
        hollow = is_hollow(organ_name)
        shapes = {k: w for k, w in profile.shape.items() if hollow or k not in HOLLOW_ONLY_SHAPES}
        if not shapes:  # e.g. a hollow-organ cancer profile asked for a solid organ
            shapes = {"irregular": 0.5, "round-like": 0.5}
        kind = "hollow" if hollow else "solid"
        cavity_weights = profile.cavity.get(kind) or {default_cavity(organ_name): 1.0}
        feature = _choose(rng, profile.features)
        lo, hi = profile.ct_range
        return {
            ENHANCEMENT: "enhanced ct" if rng.random() < self.contrast_probability else "non-contrast ct",
            SHAPE: _choose(rng, shapes),
            DENSITY: _choose(rng, profile.density),
            DENSITY_VARIATIONS: _choose(rng, profile.density_variations),
            CT_VALUE: float(round(rng.uniform(lo, hi))),
            SURFACE: SURFACE_PHRASES[surface_family(organ_name, hollow)][_choose(rng, profile.margin)],
            RELATIONSHIP: ("close relationship with adjacent organs" if rng.random() < profile.close_relationship
                           else "no close relationship with surrounding organs"),
            SPECIFIC_FEATURES: [feature] if feature else [],
            CAVITY: _choose(rng, cavity_weights),
        }
