"""A report writer calibrated to the user's real lesions: it draws a measured real lesion instead of the priors.

Given real lesions measured per "organ|lesion type" (``ld_augment.evaluation`` measures them; this module only
receives plain numbers, so the reports stage stays below evaluation), each report draws one real lesion (a
bootstrap, which keeps size, density and edge of one lesion together) and writes its:

* size: the lesion's equivalent diameter (mm, +-8 % jitter, per-axis aspect as the offline writer), with no
  clinical floor (real small lesions stay small), capped by what the organ holds;
* CT value: its core HU, and the density word from its contrast to the parenchyma (hypo/iso/hyperdense; for
  the lung: ground-glass / part-solid / solid from the core HU). A lung lesion's CT value is its tissue: the
  core's contrast divided by ``core_kept_share``, the share its scan's blur left in the core, since
  ``write_back`` blurs a lung lesion's tissue again (set as measured, 6-9 mm LIDC cores came out 60-75 HU low);
* margin: ill-defined when its 10-90 % edge width exceeds ``ill_margin_mm``, else well-defined;
* density variations: heterogeneous when its IQR exceeds ``heterogeneous_ratio`` times the parenchyma's;
* shape: irregular below ``irregular_convexity`` convexity (lung: spiculated margins below
  ``spiculated_convexity``), else round-like. The procedural engine has no sphericity/convexity target, so shape
  is calibrated only through these words.

Everything else (cavity, enhancement, relationship) comes from the priors, and an organ/type with no real
lesions falls back to the offline writer entirely. User attributes always win, and a user's shape words
(spiculated, irregular, round) choose among the real lesions whose measured shape agrees with them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ld_augment.errors import ConfigError
from ld_augment.reports._organs import is_hollow
from ld_augment.reports.model import (
    CT_VALUE, DENSITY, DENSITY_VARIATIONS, SHAPE, SPECIFIC_FEATURES, SURFACE, LesionReport, Vec3,
)
from ld_augment.reports.offline import EXOPHYTIC_HOLD_FRACTION, HOLD_FRACTION, OfflineReportWriter, request_seed
from ld_augment.reports.priors import SURFACE_PHRASES, profile_for, surface_family
from ld_augment.reports.writers import check_request, finalize_report, normalize_overrides

#: Fields a calibration lesion carries (NaN allowed except the diameter).
FIELDS = ("diameter_mm", "core_hu", "contrast_hu", "margin_width_mm", "heterogeneity_ratio", "sphericity", "convexity",
          "core_kept_share", "source_spacing_mm")
WILDCARD = "*"
#: Relative jitter of a drawn diameter (a bootstrap that never repeats a size exactly).
DIAMETER_JITTER = 0.08
LUNG_GGO_HU = -300.0   # core below: ground-glass
LUNG_SOLID_HU = -100.0  # core above: solid (between: part-solid)
#: Least kept share a lung tissue value is divided by: a lesion of a voxel or two on a coarse grid keeps less,
#: and dividing by it would make tissue no nodule has (the LIDC thin-slice 10th percentile under 6 mm is ~0.75).
MIN_KEPT_SHARE = 0.5


def calibration_key(organ: str, lesion_type: str) -> str:
    return f"{organ}|{lesion_type}"


def lung_tissue_hu(lesion: Mapping[str, float]) -> float:
    """A measured lung lesion's tissue HU: its parenchyma plus its core's contrast over the share its scan's blur
    kept there (the measured core where the share or the contrast is unknown)."""
    core, contrast, kept = lesion["core_hu"], lesion["contrast_hu"], lesion.get("core_kept_share", math.nan)
    if not (math.isfinite(contrast) and math.isfinite(kept)):
        return float(core)
    return float(core - contrast + contrast / min(max(kept, MIN_KEPT_SHARE), 1.0))


class CalibratedReportWriter(OfflineReportWriter):
    """The offline writer with size, density, margin, heterogeneity and shape drawn from real lesions."""

    name = "calibrated"

    def __init__(self, lesions: Mapping[str, Sequence[Mapping[str, float]]], *, source: str = "",
                 ill_margin_mm: float = 3.0, heterogeneous_ratio: float = 1.5, irregular_convexity: float = 0.8,
                 spiculated_convexity: float = 0.75, contrast_iso_hu: float = 10.0, **offline: Any) -> None:
        super().__init__(**offline)
        self.lesions: dict[str, list[dict[str, float]]] = {}
        for key, rows in lesions.items():
            if "|" not in key:
                raise ConfigError(f"calibration key {key!r} must be 'organ|lesion type' ('*' for any)")
            clean = [{f: float(r.get(f, math.nan)) for f in FIELDS} for r in rows]
            clean = [r for r in clean if math.isfinite(r["diameter_mm"]) and r["diameter_mm"] > 0]
            if clean:
                self.lesions[key] = clean
        self.source = str(source)
        self.ill_margin_mm = float(ill_margin_mm)
        self.heterogeneous_ratio = float(heterogeneous_ratio)
        self.irregular_convexity = float(irregular_convexity)
        self.spiculated_convexity = float(spiculated_convexity)
        self.contrast_iso_hu = float(contrast_iso_hu)

    def lesions_for(self, organ: str, lesion_type: str) -> tuple[str, list[dict[str, float]]] | None:
        """The most specific calibration entry for (organ, lesion type): exact, organ, type, then any. An organ
        also matches its family ("lung" for lung_upper_lobe_left, "kidney" for kidney_right)."""
        family = organ.replace("_", " ").split(" ")[0]
        organs = [organ] + ([family] if family != organ else [])
        keys = [calibration_key(o, lesion_type) for o in organs] + [calibration_key(o, WILDCARD) for o in organs]
        for key in keys + [calibration_key(WILDCARD, lesion_type), calibration_key(WILDCARD, WILDCARD)]:
            if key in self.lesions:
                return key, self.lesions[key]
        return None

    def provenance(self) -> dict[str, Any]:
        """What the manifest records: the source and, per key, the count and medians drawn from."""
        summary = {}
        for key, rows in self.lesions.items():
            med = {f: float(np.nanmedian([r[f] for r in rows])) if any(math.isfinite(r[f]) for r in rows) else None
                   for f in FIELDS}
            summary[key] = {"n": len(rows), "median": med}
        return {"writer": self.name, "source": self.source, "rules": {
            "ill_margin_mm": self.ill_margin_mm, "heterogeneous_ratio": self.heterogeneous_ratio,
            "irregular_convexity": self.irregular_convexity, "spiculated_convexity": self.spiculated_convexity,
            "contrast_iso_hu": self.contrast_iso_hu}, "lesions": summary}

    def write(self, *, organ: str, lesion_type: str, organ_extent: tuple[int, int, int],
              overrides: Mapping[str, str] | None = None, seed: int = 0, num_lesions: int = 1) -> LesionReport:
        organ_id, name = check_request(organ, organ_extent, num_lesions)
        found = self.lesions_for(name, lesion_type)
        if found is None:  # no real lesions of this organ/type: the literature priors
            return super().write(organ=organ, lesion_type=lesion_type, organ_extent=organ_extent, overrides=overrides,
                                 seed=seed, num_lesions=num_lesions)
        user = normalize_overrides(overrides, organ_id)
        rng = np.random.default_rng(request_seed(seed, name, lesion_type))
        profile = profile_for(lesion_type)
        extent = (int(organ_extent[0]), int(organ_extent[1]), int(organ_extent[2]))
        values = self._sample_attributes(rng, profile, name)
        rows = self._agreeing(found[1], user)
        draws = [rows[int(i)] for i in rng.integers(len(rows), size=int(num_lesions))]
        values.update(self._attributes_of(draws[0], name, lesion_type))
        cavity = str(user.get("cavity") or values.get("cavity", ""))
        hold = EXOPHYTIC_HOLD_FRACTION if "protruding" in cavity else HOLD_FRACTION
        sizes = [self._size(rng, d["diameter_mm"], extent, hold, profile.size.axis_sigma) for d in draws]
        return finalize_report(organ=name, organ_extent=extent, values=values, sizes=sizes, overrides=user)

    def _size(self, rng: np.random.Generator, diameter: float, extent: Sequence[int], hold: float,
              axis_sigma: float) -> Vec3:
        spacing = np.asarray(self.spacing, dtype=float)
        diameter *= float(np.exp(DIAMETER_JITTER * rng.standard_normal()))
        diameter = min(diameter, hold * float((np.asarray(extent, float) * spacing).min()))
        axes = rng.normal(0.0, axis_sigma, size=3)
        axes_mm = diameter * np.exp(axes - axes.mean())
        size = np.maximum(np.rint(axes_mm / spacing), 1).astype(int)
        return (int(size[0]), int(size[1]), int(size[2]))

    def _agreeing(self, rows: list[dict[str, float]], user: Mapping[str, Any]) -> list[dict[str, float]]:
        """The real lesions whose measured shape agrees with the shape words the user asked for (all of them when
        none does): a requested "spiculated" nodule is drawn from the spiculated ones, so its size, edge and
        density come with it (LIDC: spiculated nodules median 16.6 mm, the others 6.4 mm; a spiculated 6 mm
        draw showed no spicule on a 3 mm grid)."""
        features = " ".join(str(f) for f in np.atleast_1d(user.get(SPECIFIC_FEATURES) or [])).lower()
        shape = str(user.get(SHAPE) or "").lower()
        if "spiculat" in features:
            keep = [r for r in rows if r["convexity"] < self.spiculated_convexity]
        elif "irregular" in shape:
            keep = [r for r in rows if r["convexity"] < self.irregular_convexity]
        elif "round" in shape or "punctate" in shape or "cystic" in shape:
            keep = [r for r in rows if r["convexity"] >= self.irregular_convexity]
        else:
            return rows
        return keep or rows

    def _attributes_of(self, lesion: Mapping[str, float], organ: str, lesion_type: str) -> dict[str, Any]:
        """Report words and CT value describing one measured real lesion (NaN fields leave the prior's value)."""
        out: dict[str, Any] = {}
        core, contrast = lesion["core_hu"], lesion["contrast_hu"]
        lung = organ.startswith("lung")
        if math.isfinite(core):
            out[CT_VALUE] = float(round(lung_tissue_hu(lesion) if lung else core))
            if lung:
                out[DENSITY] = ("low-density ground-glass opacity" if core < LUNG_GGO_HU else
                                "isodense soft tissue mass with peripheral low-density ground-glass opacity"
                                if core < LUNG_SOLID_HU else "isodense soft tissue mass")
            elif math.isfinite(contrast) and profile_for(lesion_type).name != "cyst":
                out[DENSITY] = ("hypodense lesion" if contrast < -self.contrast_iso_hu else
                                "hyperdense lesion" if contrast > self.contrast_iso_hu else "isodense lesion")
        if math.isfinite(lesion["margin_width_mm"]):
            kind = "ill" if lesion["margin_width_mm"] > self.ill_margin_mm else "well"
            out[SURFACE] = SURFACE_PHRASES[surface_family(organ, is_hollow(organ))][kind]
        if math.isfinite(lesion["heterogeneity_ratio"]):
            out[DENSITY_VARIATIONS] = ("heterogeneous" if lesion["heterogeneity_ratio"] > self.heterogeneous_ratio
                                       else "homogeneous")
        convexity = lesion["convexity"]
        if math.isfinite(convexity) and not is_hollow(organ):
            out[SHAPE] = "irregular" if convexity < self.irregular_convexity else "round-like"
            if lung:
                out[SPECIFIC_FEATURES] = ["spiculated margins"] if convexity < self.spiculated_convexity else []
        return out
