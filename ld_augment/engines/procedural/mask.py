"""Procedural lesion masks: an ellipsoid level set shaped by the report and cut to the organ's cavity rule.

The ellipsoid fills the report's bbox (semi-axes = half the bbox size). Its normalized radius field
``r(x) = |(x - c) / a|`` is perturbed by a smoothed noise field before thresholding at 1, which deforms the
surface at low frequency (irregular/lobulated) or barely at all (round-like, cystic). Wall thickening in a
hollow organ keeps only the organ's outer band inside that ellipsoid, giving a crescent along the wall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import lesion_spec
from ld_augment.engines.base import LesionContext, MaskEngine
from ld_augment.engines.procedural.fields import grow_slices, largest_component, smooth_noise
from ld_augment.errors import ConfigError
from ld_augment.placement.bboxes import PROTRUDING, WALL, BBox, cavity_rule

#: Amplitude (in units of the normalized radius) of the surface deformation per shape kind.
DEFORMATION = {"round": 0.04, "cystic": 0.02, "punctate": 0.05, "irregular": 0.28, "wall": 0.15}


class ProceduralMaskEngine(MaskEngine):
    """Weight-free mask engine following the report's shape, size and cavity."""

    name = "procedural"

    def __init__(
        self,
        *,
        punctate_max_mm: float = 10.0,
        wall_thickness_mm: tuple[float, float] = (3.0, 12.0),
        body_threshold_hu: float = -500.0,
        deformation_scale: float = 0.4,
    ) -> None:
        self.punctate_max_mm = float(punctate_max_mm)
        self.wall_thickness_mm = (float(wall_thickness_mm[0]), float(wall_thickness_mm[1]))
        self.body_threshold_hu = float(body_threshold_hu)
        self.deformation_scale = float(deformation_scale)

    def provenance(self) -> dict:
        return {
            "engine": self.name,
            "options": {
                "punctate_max_mm": self.punctate_max_mm,
                "wall_thickness_mm": list(self.wall_thickness_mm),
                "body_threshold_hu": self.body_threshold_hu,
                "deformation_scale": self.deformation_scale,
            },
        }

    def generate_mask(self, ctx: LesionContext, bbox: BBox, report: Any, rng: np.random.Generator) -> np.ndarray:
        spec = lesion_spec(report)
        rule = cavity_rule(spec.cavity, ctx.organ_name)
        shape = ctx.ct.shape
        spacing = np.asarray(ctx.spacing, dtype=np.float64)
        crop = grow_slices(bbox.start(shape), bbox.stop(shape), (1, 1, 1), shape)
        if any(sl.stop <= sl.start for sl in crop):
            raise ConfigError(f"bbox {bbox.to_dict()} lies outside the volume of shape {shape}")
        crop_shape = tuple(sl.stop - sl.start for sl in crop)
        origin = np.array([sl.start for sl in crop], dtype=np.float64)

        # Geometric centre of the (unclipped) box and its semi-axes, in crop voxel coordinates.
        centre = np.asarray(bbox.start(), dtype=np.float64) + (np.asarray(bbox.size) - 1) / 2.0 - origin
        semi = np.maximum(np.asarray(bbox.size, dtype=np.float64) / 2.0, 0.5)
        if spec.shape == "punctate":
            semi = np.minimum(semi, np.maximum(self.punctate_max_mm / 2.0 / spacing, 0.5))

        in_box = np.zeros(crop_shape, bool)
        in_box[tuple(slice(a - o, b - o) for a, b, o in zip(bbox.start(shape), bbox.stop(shape), origin.astype(int)))] = True
        lesion = self._level_set(crop_shape, centre, semi, spec, rng) & in_box

        organ = ctx.organ_mask[crop]
        if spec.shape == "wall" or rule == WALL:
            lesion &= self._wall_band(organ, semi, spacing, rng)
        if rule == PROTRUDING:  # may leave the organ, but not into air outside the body
            lesion &= organ | (ctx.ct[crop] > self.body_threshold_hu)
        else:  # within the parenchyma, within the lumen (the organ mask includes it) and along the wall
            lesion &= organ
        lesion &= ~ctx.occupied[crop]
        if not lesion.any():
            raise ConfigError(
                f"procedural mask for organ {ctx.organ_name!r} is empty: bbox {bbox.to_dict()} has no free organ "
                f"voxel for cavity rule {rule!r} (occupied or outside the organ)"
            )
        lesion = largest_component(lesion, prefer=np.round(centre).astype(int))
        out = np.zeros(shape, bool)
        out[crop] = lesion
        return out

    def _level_set(
        self, crop_shape: tuple[int, ...], centre: np.ndarray, semi: np.ndarray, spec: Any, rng: np.random.Generator
    ) -> np.ndarray:
        """The deformed ellipsoid: ``r (1 + A) + A tanh(noise) <= 1`` with ``r`` the normalized radius.

        The tanh keeps every bump within ``r <= 1``, so bumps stay inside the box instead of being cut flat by
        its faces. Because inward bumps shrink the extent, a second pass widens the semi-axes by the measured
        shortfall (same noise field, at most 30 %), so the mask's extent follows the report's size.
        """
        grid = np.ogrid[tuple(slice(0, n) for n in crop_shape)]
        amplitude = DEFORMATION[spec.shape] * (1.5 if spec.spiculated else 1.0)
        bumps = smooth_noise(crop_shape, self.deformation_scale * semi, rng)
        if spec.spiculated:  # thin high-frequency spikes on top of the lobulation
            bumps = 0.7 * bumps + 0.7 * smooth_noise(crop_shape, 0.1 * semi + 0.5, rng)
        bumps = amplitude * np.tanh(bumps)

        def level(axes: np.ndarray) -> np.ndarray:
            radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes))).astype(np.float32)
            return radius * (1.0 + amplitude) + bumps <= 1.0

        lesion = level(semi)
        if lesion.any():
            extent = np.array([np.ptp(i) + 1 for i in np.nonzero(lesion)], dtype=np.float64)
            gain = np.clip(2.0 * semi / extent, 1.0, 1.3)
            if gain.max() > 1.02:
                lesion = level(semi * gain)
        return lesion

    def _wall_band(self, organ: np.ndarray, semi: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Organ voxels within a (slightly varying) thickness of the organ surface: the crescent of a thickened wall."""
        depth = ndimage.distance_transform_edt(organ, sampling=tuple(spacing))
        low, high = self.wall_thickness_mm
        thickness = float(np.clip(0.5 * float(np.min(semi * spacing)), low, high))
        variation = 1.0 + 0.25 * smooth_noise(organ.shape, 0.5 * semi, rng)
        return organ & (depth <= thickness * variation)

