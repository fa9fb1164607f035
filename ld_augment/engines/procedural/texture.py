"""Procedural lesion texture: a report-driven intensity field set into the CT under the mask.

Tissue values are SET, not averaged: the lesion's core is ``design field + matched noise`` at the report's CT
value (no label-wide mean is forced onto it, which let a blended rim drag the core), and under the label fat,
gas and bone are replaced by the lesion rather than blended with it. The edge transition is centred on the
mask's surface (blend weight 0.5 there), so the half-contrast surface a reader would contour is the label: a
well-defined margin is a partial-volume voxel, an ill-defined one a wider band whose outer half (< half
contrast, outside the label) the pipeline can mark as nnU-Net's ignore label. Where old and new tissue blend,
independent noise tops the blend up to the organ's noise level (a weighted mean of two noises is smoother).

The design field starts from the report's CT value, else a value relative to the organ's parenchyma
(``density.py``: fat and gas excluded, the contrast phase from the report), and adds the report's features
(rim, heterogeneity, central necrosis, bright nodules, stones, a capsule that makes an isodense lesion
detectable). Where a lesion grew out of its organ, the unlabelled tissue around it is displaced
(``displace_around``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import LesionSpec, expected_contrast_sign, is_bone, is_lung, lesion_spec
from ld_augment.engines.base import LesionContext, TextureEngine
from ld_augment.engines.procedural.density import LUNG_HU, MIN_CONTRAST_HU, lesion_hu, phase_of
from ld_augment.engines.procedural.fields import (SOLID_CORE_SHARE, core_region, mask_slices, signed_distance,
                                                  smooth_noise)
from ld_augment.engines.procedural.stats import OrganStats, matched_noise, organ_stats, soft_tissue_stats
from ld_augment.errors import ConfigError

#: Half-width (mm) of the edge transition per margin kind, centred on the label's surface.
MARGIN_MM = {"well": 0.6, "default": 1.0, "ill": 2.5}
#: Below / above these HU a voxel under a soft-tissue lesion's label is fat/gas or bone: replaced, not blended.
FOREIGN_HU = (-30.0, 300.0)
#: Least share of the core's contrast every voxel of a hypo/hyperdense lesion keeps (before noise).
VISIBLE_SHARE = 0.65
#: HU of central necrosis: near water.
NECROSIS_HU = (5.0, 20.0)
#: Lung lesion design HU below which its noise is the lung's (ground glass keeps the lung's texture), above
#: which the scan's soft-tissue noise times SOLID_NODULE_NOISE_GAIN (solid tissue); linear between.
LUNG_NOISE_HU = (-650.0, -150.0)
#: A solid nodule's fine texture over its scan's soft-tissue noise: LIDC's thin-slice solid nodules of >= 200
#: voxels at 1 mm, residual robust SD inside (> 2.5 mm deep) / in the VOI's soft tissue: median 1.31 (IQR
#: 1.12-1.67, n 28). There soft tissue and lung read alike (0.89: thin sharp-kernel slices are noise); in the
#: shared 3 mm CT the lung's residual is 6x its soft tissue's (structure), and matched to it solid nodules were
#: as grainy as the lung.
SOLID_NODULE_NOISE_GAIN = 1.3
#: A smooth lung nodule's blend outwards is capped at this share of its depth (elsewhere, and inwards, at half;
#: at most MARGIN_MM either way). Capped at half, poorly defined and sharp nodules of 9-12 mm measured alike on a
#: 3 mm grid (bench_lidc_compare's design pairs with the lung's voxel floor, seeds 0-3: +0.06, +0.04, +0.19,
#: +0.06 mm of margin width; LIDC +0.20); 0.8 gives +0.19, +0.15, +0.21, +0.07. Uncapped (MARGIN_MM), the
#: quality gate dropped 6 of 13 poorly defined nodules of seed 0's population (half contrast 1.16-1.28 x the
#: label's diameter); 0.8 none of 73 over seeds 0-6 beyond the one that 0.5 drops too.
LUNG_MARGIN_OUT_DEPTH_SHARE = 0.8


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


def anchor_to_parenchyma(spec: LesionSpec, target: float, local_hu: float, organ_name: str) -> float:
    """The target moved (least amount) to the side of THIS neighbourhood's parenchyma its density word names.

    The report's CT value was set against the whole organ's parenchyma; where the lesion sits, the organ
    can be a few HU denser or lighter (cortex vs medulla, fatty pancreas), which could turn a "hypodense"
    request into an isodense lesion. The density word wins.
    """
    sign = expected_contrast_sign(spec, organ_name)
    if sign == -1 and target > local_hu - MIN_CONTRAST_HU:
        return float(local_hu - MIN_CONTRAST_HU)
    if sign == 1 and target < local_hu + MIN_CONTRAST_HU:
        return float(local_hu + MIN_CONTRAST_HU)
    return float(target)


class ProceduralTextureEngine(TextureEngine):
    """Weight-free texture engine following the report's density, variations, features and margin."""

    name = "procedural"
    ideal_edges = True  # a well-defined margin is painted as a step

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
        # the blend is centred on the mask's surface: alpha = 0.5 there, so the half-contrast surface (what a
        # reader contours) IS the label; inside it the lesion's own tissue, outside a band below half contrast
        depth = float(sd[mask].max())
        half = float(np.clip(MARGIN_MM[spec.margin], 0.5 * min(spacing), max(0.5 * depth, 0.5 * min(spacing))))
        # the core (fields.core_region: the voxels that carry the requested value) lies wholly past the blend's
        # inner half: in a 5-6 mm nodule a wider band reached into it, and against aerated lung a 3 % shortfall
        # of the blend is a 25 HU darker core. An ill-defined margin keeps its width outwards (below half
        # contrast) where the core leaves no room inside.
        core = core_region(mask, spacing)
        half_in = min(half, max(float(sd[core].min()), 0.5 * min(spacing)))
        # in lung the margin keeps more of its width outwards, into aerated lung (LUNG_MARGIN_OUT_DEPTH_SHARE);
        # not around spicules, whose summed halos pushed half contrast past the label (quality gate: 1.2-1.4 x)
        half_out = half
        if is_lung(ctx.organ_name) and not spec.spiculated:
            half_out = max(half, min(MARGIN_MM[spec.margin], LUNG_MARGIN_OUT_DEPTH_SHARE * depth))
        t = np.clip(0.5 + sd / (2.0 * np.where(sd >= 0, half_in, half_out)), 0.0, 1.0)
        alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
        alpha[~mask & ~ctx.organ_mask[region]] = 0.0  # the margin spreads into the organ, not its neighbours
        # nor into a lumen's gas or a calcification (in lung, the air around a nodule IS the organ it blurs into)
        air = np.zeros(ct.shape, bool) if is_lung(ctx.organ_name) else ct < -200.0
        alpha[~mask & (air | (ct > 300.0))] = 0.0
        alpha[~mask & ctx.occupied[region]] = 0.0  # and never over an earlier lesion

        phase = phase_of(getattr(report, "enhancement_status", None))
        target = anchor_to_parenchyma(spec, self._base_hu(spec, stats.median_hu, ctx.organ_name, phase, rng),
                                      stats.median_hu, ctx.organ_name)
        design = self._design(spec, stats, target, mask, sd, spacing, rng, lung=is_lung(ctx.organ_name))
        stone_weight, stone_hu = self._stones(spec, mask, sd, spacing, rng)
        # tissue values are SET: the core is the design (plus the organ's noise), never shifted to force a
        # label-wide mean. Under the label, what the lesion replaced is not blended back in where it is fat,
        # gas or bone: the blend's "old" side there is the organ's parenchyma (its noise included).
        foreign = mask & self._foreign(ct, ctx.organ_name)
        under = np.where(foreign, stats.median_hu + matched_noise(ct.shape, stats, spacing, rng), ct)
        # the scan's noise is correlated over a few voxels (more in a grid interpolated from thick slices), so a
        # 9-14 mm lung nodule's core holds about one independent noise blob and its median wanders by the
        # noise SD (40-60 HU in lung) away from the report's value; the realisation is shifted to a zero core
        # median (same SD, same grain), so the value the report states holds in a small lesion as in a large one
        lesion_noise = self._noise_source(ctx, lesion_mask, stats, design, spacing)
        noise = lesion_noise(rng)
        # centred where the gate reads the requested value: a part-solid nodule's solid component (its ground
        # glass carries the lung's noise, its solid part the scan's soft-tissue noise)
        solid = core_region(mask, spacing, SOLID_CORE_SHARE) if spec.density == "soft_tissue_ggo" else core
        noise -= float(np.median(noise[solid if solid.any() else core]))
        inside = (1.0 - stone_weight) * (design + noise) + stone_weight * stone_hu
        low, high = self.hu_range
        blended = (1.0 - alpha) * under + alpha * inside
        # (1-a) old + a new noise has variance ((1-a)^2 + a^2) s^2: top it up to s^2 with 2a(1-a) s^2 more
        top_up = np.sqrt(np.clip(2.0 * alpha * (1.0 - alpha), 0.0, None)) * (1.0 - stone_weight)
        blended = np.clip(blended + top_up * lesion_noise(rng), low, high)
        out = ctx.ct.astype(np.float32, copy=True)
        out[region] = np.where((alpha > 0) | mask, blended, ct)
        return out

    @staticmethod
    def _noise_source(ctx: LesionContext, lesion_mask: np.ndarray, stats: OrganStats, design: np.ndarray,
                      spacing: tuple[float, float, float]) -> Any:
        """rng -> the lesion's noise on the crop: the organ's, but in lung the scan's soft-tissue noise (with a
        solid nodule's own texture, SOLID_NODULE_NOISE_GAIN) where the design is solid (``soft_tissue_stats``),
        blended linearly in HU between ground glass and solid; the lung's where the scan has no soft tissue."""
        shape = design.shape
        tissue = soft_tissue_stats(ctx.ct, lesion_mask, spacing) if is_lung(ctx.organ_name) else None
        if tissue is None:
            return lambda rng: matched_noise(shape, stats, spacing, rng)
        tissue = replace(tissue, noise_std=SOLID_NODULE_NOISE_GAIN * tissue.noise_std)
        solid = np.clip((design - LUNG_NOISE_HU[0]) / (LUNG_NOISE_HU[1] - LUNG_NOISE_HU[0]), 0.0, 1.0)
        return lambda rng: ((1.0 - solid) * matched_noise(shape, stats, spacing, rng)
                            + solid * matched_noise(shape, tissue, spacing, rng)).astype(np.float32)

    @staticmethod
    def _foreign(ct: np.ndarray, organ_name: str) -> np.ndarray:
        """Voxels a lesion of this organ must not keep under its label: fat, gas and bone (lung: none)."""
        if is_lung(organ_name):
            return np.zeros(ct.shape, bool)
        if is_bone(organ_name):
            return ct < FOREIGN_HU[0]  # lytic/sclerotic: marrow fat is replaced, bone itself is the organ
        return (ct < FOREIGN_HU[0]) | (ct > FOREIGN_HU[1])

    def _design(
        self,
        spec: LesionSpec,
        stats: OrganStats,
        target: float,
        mask: np.ndarray,
        sd: np.ndarray,
        spacing: tuple[float, float, float],
        rng: np.random.Generator,
        *,
        lung: bool = False,
    ) -> np.ndarray:
        """Noise-free intensity field (float32, crop shape): the core at ``target`` plus the type's features.

        Features are zero-median over the core (heterogeneity) or local (rim, capsule, necrosis, blobs), so the
        core's median stays on the target.
        """
        ref = stats.median_hu
        depth = float(sd[mask].max()) if mask.any() else 1.0
        field = np.full(mask.shape, target, dtype=np.float32)
        contrast = abs(target - ref)
        if spec.density == "ring":  # an enhancing rim around the (hypodense) core at the target
            rim = min(np.clip(0.25 * depth, 2.0, 4.0), 0.35 * depth)
            rim_hu = max(ref, target) + rng.uniform(25.0, 45.0)
            field = np.where((sd <= rim) & mask, rim_hu, target).astype(np.float32)
            field = ndimage.gaussian_filter(field, [0.6 / s for s in spacing])
            contrast = abs(rim_hu - target) / 2
        elif spec.density == "soft_tissue_ggo":  # part-solid: solid core (the target) with a ground-glass rim
            # the solid component is the deeper core the gate measures (fields.SOLID_CORE_SHARE); the ground
            # glass fills the rest of the label and the blend's outer side
            solid = core_region(mask, spacing, SOLID_CORE_SHARE)
            field[(sd < 0) | (mask & ~solid)] = rng.uniform(-650.0, -500.0)
        elif spec.shape == "cystic" and depth >= 4.0:  # thin, slightly denser wall around the fluid
            field[sd <= 1.0] += rng.uniform(8.0, 15.0)
        elif spec.density == "iso" and depth >= 4.0:  # an isodense lesion is seen by its capsule and texture
            capsule = min(np.clip(0.2 * depth, 1.5, 3.0), 0.3 * depth)
            field[sd <= capsule] += rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 25.0)
            contrast = max(contrast, 15.0)
        sigma_mm = lambda mm: [mm / s for s in spacing]  # noqa: E731
        if spec.heterogeneous or spec.density == "mixed":
            # the scale of a lesion's internal variation is its tissue's contrast range; in lung that is the
            # spread of its density class's cores (LUNG_HU: solid 80 HU, ground glass 200 HU), not the ~800 HU
            # step to aerated lung, which gave solid nodules +-280 HU smooth blobs (cores from fat to
            # calcium density) and moved a 9-14 mm nodule's core median 30-500 HU off the requested value
            scale = contrast
            if lung:
                low, high = LUNG_HU.get(spec.density, LUNG_HU["soft_tissue"])
                scale = high - low
            amplitude = max(20.0, 0.6 * scale) if spec.density == "mixed" else max(8.0, 0.35 * scale)
            variation = smooth_noise(mask.shape, sigma_mm(2.5), rng)
            # smooth noise of 2.5 mm has only a few independent blobs in a small core, so its core mean is far
            # from zero per lesion: centre it on the core so the core's median stays on the requested value
            core = core_region(mask, spacing)
            variation -= float(np.median(variation[core]))
            field += amplitude * variation
        if spec.dark_areas and target > NECROSIS_HU[1] + 10.0 and depth >= 4.0:
            # necrosis: one central, confluent near-water area (not scattered dips)
            edge = (0.55 + 0.1 * smooth_noise(mask.shape, sigma_mm(3.0), rng)) * depth
            necrotic = mask & (sd > edge)
            field[necrotic] = min(float(rng.uniform(*NECROSIS_HU)), target - 15.0)
            field = np.where(mask, ndimage.gaussian_filter(field, sigma_mm(0.8)), field)
        elif spec.dark_areas:
            blobs = np.clip((smooth_noise(mask.shape, sigma_mm(3.0), rng) - 0.9) / 0.5, 0.0, 1.0)
            field -= rng.uniform(15.0, 30.0) * blobs
        if spec.bright_areas:  # a few soft bright nodules (peripheral in a haemangioma: near the edge)
            blobs = np.clip((smooth_noise(mask.shape, sigma_mm(3.0), rng) - 0.9) / 0.5, 0.0, 1.0)
            field += rng.uniform(20.0, 40.0) * blobs
        side = float(np.sign(target - ref))
        if spec.density not in ("iso", "ring", "soft_tissue_ggo") and abs(target - ref) >= MIN_CONTRAST_HU:
            # variation never makes part of a hypo/hyperdense lesion isodense: the whole label stays visible
            least = VISIBLE_SHARE * abs(target - ref)
            field = np.where(mask, ref + side * np.maximum(side * (field - ref), least), field)
        return field.astype(np.float32)

    @staticmethod
    def _base_hu(spec: LesionSpec, ref: float, organ_name: str, phase: str | None, rng: np.random.Generator) -> float:
        """Target core HU: the report's CT value, else from the organ's parenchyma (density.py)."""
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
