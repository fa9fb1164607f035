"""Procedural lesion texture: a report-driven intensity field blended into the CT around the mask.

Inside the lesion the CT is replaced by ``design field + matched noise``; a blend weight from the signed
distance to the mask's surface gives partial volume at the edge (well-defined margin) or a wide transition
(ill-defined). The transition lies INSIDE the mask (only the half-voxel partial-volume layer is outside), so
the label covers every voxel that visibly changed; an ill-defined margin is a soft gradient within the label,
not a halo of changed organ around it. Where old and new tissue blend, independent noise tops the blend up
to the organ's noise level (a weighted mean of two noises is smoother than either).

The design field starts from a target mean set relative to the organ's parenchyma (``density.py``: fat and
gas excluded, the contrast phase from the report) or the report's CT value, and adds the report's features
(rim, heterogeneity, dark/bright areas, stones, a capsule that makes an isodense lesion detectable). A final
shift of the shiftable part makes the lesion's measured mean land on the target despite blending and spots.
Where a lesion grew out of its organ, the unlabelled tissue around it is displaced (``displace_around``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import LesionSpec, lesion_spec
from ld_augment.engines.base import LesionContext, TextureEngine
from ld_augment.engines.procedural.density import lesion_hu, phase_of
from ld_augment.engines.procedural.fields import mask_slices, signed_distance, smooth_noise
from ld_augment.engines.procedural.stats import OrganStats, matched_noise, organ_stats
from ld_augment.errors import ConfigError

#: Blend half-width (mm) of the edge transition per margin kind.
MARGIN_MM = {"well": 1.0, "default": 1.5, "ill": 4.0}
#: How far (mm) the transition may reach outside the mask: the partial-volume layer of a sharp edge.
OUTSIDE_MM = 0.75


def displace_around(ct: np.ndarray, grown: np.ndarray, movable: np.ndarray, spacing: tuple[float, ...],
                    reach_mm: float = 12.0) -> np.ndarray:
    """Mass effect: push the tissue around ``grown`` (the lesion's part outside its organ) radially outwards.

    Incompressible radial model: a ball of radius R (``grown``'s equivalent radius) inserted at its centre
    moves the tissue at distance r to where r0 lay, r^3 = r0^3 + R^3, so the displacement R^3 / (3 r^2)
    fades with distance (tapered to zero ``reach_mm`` from the surface). Only ``movable`` (unlabelled) voxels outside ``grown`` change, and only to values
    from movable positions, so no labelled structure moves away from its label.
    """
    if grown.sum() < 5:
        return ct
    sp = np.asarray(spacing, dtype=np.float64)
    radius = float((3.0 * grown.sum() * np.prod(sp) / (4.0 * np.pi)) ** (1.0 / 3.0))
    centre = np.asarray(ndimage.center_of_mass(grown))
    grid = np.indices(ct.shape, dtype=np.float32)
    offset = [(grid[a] - centre[a]) * sp[a] for a in range(3)]
    r = np.sqrt(sum(o * o for o in offset)).astype(np.float32)
    r0 = np.cbrt(np.clip(r**3 - radius**3, 0.0, None))
    # taper to zero displacement within `reach` of the surface, so the warp ends smoothly inside the crop
    taper = np.clip(1.0 - (r - radius) / reach_mm, 0.0, 1.0) ** 2
    r0 = r - taper * (r - r0)
    scale = np.where(r > 0, r0 / np.maximum(r, 1e-6), 1.0)
    source = [centre[a] + (grid[a] - centre[a]) * scale for a in range(3)]
    warped = ndimage.map_coordinates(ct, source, order=1, mode="nearest").astype(np.float32)
    from_movable = ndimage.map_coordinates(movable.astype(np.float32), source, order=0, mode="nearest") > 0.5
    apply = movable & from_movable & ~grown & (r > radius) & (r - r0 > 0.25)
    return np.where(apply, warped, ct)


class ProceduralTextureEngine(TextureEngine):
    """Weight-free texture engine following the report's density, variations, features and margin."""

    name = "procedural"

    def __init__(self, *, hu_range: tuple[float, float] = (-1024.0, 3071.0), neighbourhood_mm: float = 15.0,
                 mass_effect: bool = True) -> None:
        if hu_range[0] >= hu_range[1]:
            raise ConfigError(f"hu_range must be (low, high) with low < high, got {hu_range}")
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))
        self.neighbourhood_mm = float(neighbourhood_mm)
        self.mass_effect = bool(mass_effect)

    def provenance(self) -> dict:
        return {"engine": self.name, "options": {"hu_range": list(self.hu_range), "neighbourhood_mm": self.neighbourhood_mm,
                                                 "mass_effect": self.mass_effect}}

    def render(self, ctx: LesionContext, lesion_mask: np.ndarray, report: Any, rng: np.random.Generator) -> np.ndarray:
        lesion_mask = np.asarray(lesion_mask, dtype=bool)
        if lesion_mask.shape != ctx.ct.shape or not lesion_mask.any():
            raise ConfigError(f"lesion mask must be a non-empty bool array of shape {ctx.ct.shape}")
        spec = lesion_spec(report)
        spacing = ctx.spacing
        margin = [int(np.ceil(self.neighbourhood_mm / s)) for s in spacing]
        region = mask_slices(lesion_mask, margin)
        stats = organ_stats(ctx.ct, ctx.organ_mask, lesion_mask | ctx.occupied, region, spacing,
                            organ_name=ctx.organ_name)

        ct = ctx.ct[region].astype(np.float32)
        mask = lesion_mask[region]
        if self.mass_effect:  # tissue the exophytic part grew into is pushed aside, not overwritten
            ct = displace_around(ct, mask & ~ctx.organ_mask[region], np.asarray(ctx.organ_seg[region]) == 0,
                                 spacing)
        sd = signed_distance(mask, spacing)
        # transition from OUTSIDE_MM outside the surface to 2 x half-width inside it (at most 60 % of the
        # lesion's depth, so a small ill-defined lesion still reaches its density)
        width = min(2.0 * MARGIN_MM[spec.margin], max(0.6 * float(sd[mask].max()) + OUTSIDE_MM, 1.0))
        t = np.clip((sd + OUTSIDE_MM) / (width + OUTSIDE_MM), 0.0, 1.0)
        alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
        alpha[~mask & ~ctx.organ_mask[region]] = 0.0  # partial volume spreads into the organ, not its neighbours
        alpha[~mask & ((ct < -200.0) | (ct > 300.0))] = 0.0  # nor into a lumen's gas or a calcification
        alpha[~mask & ctx.occupied[region]] = 0.0  # and never over an earlier lesion

        phase = phase_of(getattr(report, "enhancement_status", None))
        design = self._design(spec, stats, ctx.organ_name, mask, sd, spacing, rng, phase)
        stone_weight, stone_hu = self._stones(spec, mask, sd, spacing, rng)
        field = design + matched_noise(ct.shape, stats, spacing, rng)
        # The report's CT value when given, else the design's own mean (which blending would otherwise dilute).
        if spec.ct_value is not None:
            target = spec.ct_value
        else:
            target = float(((1 - stone_weight) * design + stone_weight * stone_hu)[mask].mean())

        low, high = self.hu_range
        shiftable = (alpha * (1.0 - stone_weight))[mask].mean()
        for _ in range(3):  # shift the design so the blended, clipped lesion mean lands on the target
            inside = (1.0 - stone_weight) * field + stone_weight * stone_hu
            blended = np.clip((1.0 - alpha) * ct + alpha * inside, low, high)
            error = target - float(blended[mask].mean())
            if abs(error) < 0.25 or shiftable <= 0:
                break
            field += error / shiftable
        # (1-a) old + a new noise has variance ((1-a)^2 + a^2) s^2: top it up to s^2 with 2a(1-a) s^2 more
        top_up = np.sqrt(np.clip(2.0 * alpha * (1.0 - alpha), 0.0, None)) * (1.0 - stone_weight)
        blended = np.clip(blended + top_up * matched_noise(ct.shape, stats, spacing, rng), low, high)
        out = ctx.ct.astype(np.float32, copy=True)
        out[region] = np.where(alpha > 0, blended, ct)
        return out

    def _design(
        self,
        spec: LesionSpec,
        stats: OrganStats,
        organ_name: str,
        mask: np.ndarray,
        sd: np.ndarray,
        spacing: tuple[float, float, float],
        rng: np.random.Generator,
        phase: str | None = None,
    ) -> np.ndarray:
        """Noise-free intensity field (float32, crop shape): base HU plus rim, halo, wall, heterogeneity, blobs."""
        ref = stats.median_hu
        depth = float(sd[mask].max()) if mask.any() else 1.0
        field = np.full(mask.shape, self._base_hu(spec, ref, organ_name, phase, rng), dtype=np.float32)
        contrast = abs(float(field.flat[0]) - ref)
        if spec.density == "ring":
            rim = np.clip(0.25 * depth, 1.5, 4.0)
            core_hu = ref - rng.uniform(30.0, 50.0)
            rim_hu = ref + rng.uniform(20.0, 40.0)
            field = np.where(sd <= rim, rim_hu, core_hu).astype(np.float32)
            field = ndimage.gaussian_filter(field, [0.6 / s for s in spacing])
            contrast = abs(rim_hu - core_hu) / 2
        elif spec.density == "soft_tissue_ggo":  # solid core with a ground-glass halo
            field[sd < 0.4 * depth] = rng.uniform(-650.0, -500.0)
        elif spec.shape == "cystic":  # thin, slightly denser wall around the fluid
            field[sd <= 1.5] += rng.uniform(8.0, 15.0)
        elif spec.density == "iso":  # an isodense lesion is seen by its capsule and texture, not its mean
            capsule = np.clip(0.2 * depth, 1.5, 3.0)
            field[sd <= capsule] += rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 25.0)
            contrast = max(contrast, 15.0)
        sigma_mm = lambda mm: [mm / s for s in spacing]  # noqa: E731
        if spec.heterogeneous or spec.density == "mixed":
            amplitude = max(20.0, 0.6 * contrast) if spec.density == "mixed" else max(8.0, 0.35 * contrast)
            field += amplitude * smooth_noise(mask.shape, sigma_mm(2.5), rng)
        for wanted, sign in ((spec.dark_areas, -1.0), (spec.bright_areas, 1.0)):
            if wanted:  # a few soft blobs: high values of a smooth field
                blobs = np.clip((smooth_noise(mask.shape, sigma_mm(3.0), rng) - 0.9) / 0.5, 0.0, 1.0)
                field += sign * rng.uniform(20.0, 40.0) * blobs
        return field.astype(np.float32)

    @staticmethod
    def _base_hu(spec: LesionSpec, ref: float, organ_name: str, phase: str | None, rng: np.random.Generator) -> float:
        """Target lesion HU before features: the report's CT value, else from the organ's parenchyma (density.py)."""
        if spec.ct_value is not None:
            return spec.ct_value
        return lesion_hu(spec, ref, organ_name, phase, rng)

    @staticmethod
    def _stones(
        spec: LesionSpec, mask: np.ndarray, sd: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        """Weight map (0..1) of calcified spots and their HU; zero weight when the report names no stone."""
        weight = np.zeros(mask.shape, np.float32)
        if not spec.stone:
            return weight, 0.0
        candidates = np.flatnonzero(mask & (sd > 1.0))
        if candidates.size == 0:
            candidates = np.flatnonzero(mask)
        grid = np.ogrid[tuple(slice(0, n) for n in mask.shape)]
        for _ in range(int(rng.integers(1, 4))):
            centre = np.unravel_index(candidates[rng.integers(candidates.size)], mask.shape)
            radius = rng.uniform(1.0, 3.0)
            dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)))
            weight = np.maximum(weight, np.clip(radius - dist + 0.5, 0.0, 1.0))
        return weight * mask, float(rng.uniform(300.0, 900.0))
