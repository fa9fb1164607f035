"""The offline report writer (default): samples a vocabulary-consistent report, no network, seeded.

It lets the whole pipeline run on a fresh machine and makes banks reproducible: the same request and seed
give the same report. Sizes are drawn in mm from the lesion type's clinical distribution (``priors.py``),
floored at a few voxels of the source scan (smaller lesions vanish on its grid), capped by what the organ
can hold, and converted to voxels of the standardized grid.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from ld_augment.reports._organs import default_cavity, is_hollow
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, DENSITY_VARIATIONS, ENHANCEMENT, RELATIONSHIP, SHAPE, SPECIFIC_FEATURES, SURFACE,
    LesionReport, Vec3,
)
from ld_augment.reports.priors import (
    HOLLOW_ONLY_SHAPES, SURFACE_PHRASES, WALL_SHAPES, LesionProfile, SizePrior, profile_for, surface_family,
)
from ld_augment.reports.writers import ReportWriter, check_request, finalize_report, normalize_overrides

#: Default floor of a lesion's diameter (mm): 3 voxels of a typical 3 mm clinical scan (see ``min_diameter_mm``).
MIN_DIAMETER_MM = 9.0
#: Largest lesion diameter as a fraction of the organ's smallest extent (placement shrinks what still won't fit).
HOLD_FRACTION = 0.8
#: The same for a lesion that protrudes from its organ: part of it grows outside (exophytic RCC, a pancreatic mass
#: deforming the gland's contour), so it may exceed the organ's thinnest extent; the mask engine lets it grow only
#: into unlabelled soft tissue.
EXOPHYTIC_HOLD_FRACTION = 1.25
#: Relative per-axis spread of further lesions around the first one's size (used by the LLM writer).
SIZE_JITTER = 0.15


def choose(rng: np.random.Generator, choices: Mapping[str, float]) -> str:
    """One key of ``choices`` drawn with probability proportional to its weight."""
    values = list(choices)
    weights = np.asarray([choices[v] for v in values], dtype=float)
    return values[int(rng.choice(len(values), p=weights / weights.sum()))]


def sample_diameter_mm(rng: np.random.Generator, prior: SizePrior) -> float:
    """One equivalent diameter (mm) from the log-normal prior, redrawn (at most 50 times) outside its range."""
    for _ in range(50):
        diameter = prior.median_mm * float(np.exp(prior.sigma * rng.standard_normal()))
        if prior.low_mm <= diameter <= prior.high_mm:
            return diameter
    return float(np.clip(prior.median_mm, prior.low_mm, prior.high_mm))


def sample_size(rng: np.random.Generator, profile: LesionProfile, organ_extent: Sequence[int],
                spacing: Sequence[float] = (1.0, 1.0, 1.0), *, min_diameter_mm: float = MIN_DIAMETER_MM,
                hold_fraction: float = HOLD_FRACTION, prior: SizePrior | None = None) -> Vec3:
    """One lesion box (standardized voxels): a clinical diameter, floored, capped by the organ, per-axis jitter.

    The floor wins over the type's own lower bound (a 5 mm metastasis is real but invisible on a 3 mm grid);
    the organ cap wins over the floor (a lesion never exceeds the organ's smallest extent by much), and
    ``finalize_report`` finally clamps each axis to the organ's extent.
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    extent_mm = np.asarray(organ_extent, dtype=float) * spacing_arr
    prior = prior or profile.size
    diameter = max(sample_diameter_mm(rng, prior), float(min_diameter_mm) * prior.floor_share)
    diameter = min(diameter, hold_fraction * float(extent_mm.min()))
    axes = rng.normal(0.0, prior.axis_sigma, size=3)
    axes_mm = diameter * np.exp(axes - axes.mean())  # geometric mean = the sampled diameter
    size = np.maximum(np.rint(axes_mm / spacing_arr), 1).astype(int)
    return (int(size[0]), int(size[1]), int(size[2]))


def request_seed(seed: int, organ: str, lesion_type: str) -> np.random.SeedSequence:
    """Seed stream of one request: the same seed gives unrelated lesions in different organs or types."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(f"{organ}|{lesion_type}".encode())])


class OfflineReportWriter(ReportWriter):
    """Samples attributes from lesion-type priors (see ``priors.py``); deterministic given the seed.

    ``contrast_probability`` is the chance of "enhanced ct" when nobody says (the pipeline infers the phase
    from the CT and passes it as an override). ``spacing`` is the standardized grid's voxel size (mm) that the
    report's sizes count in; ``min_diameter_mm`` the smallest lesion drawn (a few source-scan voxels).
    """

    name = "offline"

    def __init__(self, *, contrast_probability: float = 0.8, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 min_diameter_mm: float = MIN_DIAMETER_MM) -> None:
        self.contrast_probability = float(contrast_probability)
        self.spacing = tuple(float(s) for s in spacing)
        self.min_diameter_mm = float(min_diameter_mm)

    def write(self, *, organ: str, lesion_type: str, organ_extent: tuple[int, int, int],
              overrides: Mapping[str, str] | None = None, seed: int = 0, num_lesions: int = 1) -> LesionReport:
        organ_id, name = check_request(organ, organ_extent, num_lesions)
        user = normalize_overrides(overrides, organ_id)
        rng = np.random.default_rng(request_seed(seed, name, lesion_type))
        profile = profile_for(lesion_type)
        extent = (int(organ_extent[0]), int(organ_extent[1]), int(organ_extent[2]))
        values = self._sample_attributes(rng, profile, name)
        cavity = str((user or {}).get(CAVITY) or values.get(CAVITY, ""))
        hold = EXOPHYTIC_HOLD_FRACTION if "protruding" in cavity else HOLD_FRACTION
        # the size follows the shape and features the report ends up with (the user's words win)
        words = " ".join(str(v) for k in (SHAPE, SPECIFIC_FEATURES) for v in np.atleast_1d(
            (user or {}).get(k) if (user or {}).get(k) is not None else values.get(k, "")))
        sizes = [sample_size(rng, profile, extent, self.spacing, min_diameter_mm=self.min_diameter_mm,
                             hold_fraction=hold, prior=profile.size_for(words))
                 for _ in range(int(num_lesions))]
        return finalize_report(organ=name, organ_extent=extent, values=values, sizes=sizes, overrides=user)

    def _sample_attributes(self, rng: np.random.Generator, profile: LesionProfile, organ_name: str) -> dict[str, Any]:
        hollow = is_hollow(organ_name)
        kind = "hollow" if hollow else "solid"
        cavity_weights = profile.cavity.get(kind) or {default_cavity(organ_name): 1.0}
        cavity = choose(rng, cavity_weights)
        shapes = {k: w for k, w in profile.shape.items() if hollow or k not in HOLLOW_ONLY_SHAPES}
        if "lumen" in cavity:  # a box inside the lumen has no wall to thicken or narrow
            shapes = {k: w for k, w in shapes.items() if k not in WALL_SHAPES} or {"protrusion into the lumen": 1.0}
        if not shapes:  # e.g. a hollow-organ cancer profile asked for a solid organ
            shapes = {"irregular": 0.5, "round-like": 0.5}
        feature = choose(rng, profile.features)
        lo, hi = profile.ct_range
        return {
            ENHANCEMENT: "enhanced ct" if rng.random() < self.contrast_probability else "non-contrast ct",
            SHAPE: choose(rng, shapes),
            DENSITY: choose(rng, profile.density),
            DENSITY_VARIATIONS: choose(rng, profile.density_variations),
            CT_VALUE: float(round(rng.uniform(lo, hi))),
            SURFACE: SURFACE_PHRASES[surface_family(organ_name, hollow)][choose(rng, profile.margin)],
            RELATIONSHIP: ("close relationship with adjacent organs" if rng.random() < profile.close_relationship
                           else "no close relationship with surrounding organs"),
            SPECIFIC_FEATURES: [feature] if feature else [],
            CAVITY: cavity,
        }
