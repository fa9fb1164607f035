"""Procedural lesion masks: an ellipsoid level set shaped by the report and cut to the organ's cavity rule.

The ellipsoid fills the report's bbox (semi-axes = half the bbox size). Its normalized radius field
``r(x) = |(x - c) / a|`` is perturbed by smoothed noise at two scales before thresholding at 1, which lobulates
the surface (coarse lobes plus finer bumps: real tumour masks have sphericity ~0.75-0.8, a gently bumpy
ellipsoid ~0.9); irregular lesions may get satellite nodules beside the main mass.

Hollow organs (TotalSegmentator's mask covers wall and lumen): wall thickening keeps the organ's outer band of
a pathological thickness (``wall_thickness_mm``, beyond the normal <= 5 mm wall) inside the ellipsoid, so the
lesion grows into the lumen and displaces gas; "luminal narrowing" is the same band around the whole
circumference of a segment (a ring that leaves a narrowed lumen); "protrusion into the lumen" is a polypoid
mass. Every lesion of a hollow organ stays out of its deepest part, so the lumen stays open. A protruding
(exophytic) lesion leaves its organ only into unlabelled soft tissue near it (never fat, air, bone or another
labelled structure) and keeps at least half of itself inside.

No flat faces: the shape fits inside its box and a voxel off the volume's border; it shrinks (per axis)
rather than being clipped by a box face (box-clipped faces were found on 16 of 53 lesions >= 20 mm).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import is_lung, lesion_spec
from ld_augment.engines.base import LesionContext, MaskEngine
from ld_augment.engines.procedural.fields import grow_slices, largest_component, smooth_noise
from ld_augment.errors import ConfigError
from ld_augment.organs.registry import is_hollow
from ld_augment.placement.bboxes import PROTRUDING, WALL, BBox, cavity_rule

#: Amplitude (in units of the normalized radius) of the surface deformation per shape kind. Abdominal tumours
#: were too lobulated at 0.16 / 0.32 (round / irregular): on a real contrast-enhanced CT, liver tumours had
#: convexity 0.83 and sphericity 0.76 where the real ones had 0.88 and 0.80.
DEFORMATION = {"round": 0.11, "cystic": 0.04, "punctate": 0.08, "irregular": 0.22, "wall": 0.15}
#: Body size of a spiculated lesion (fraction of the box's semi-axes): the strands reach out to the box.
SPICULE_BODY = 0.55
#: Smallest box side (voxels) along which a body leaves room for the writer's contour (``LesionContext.
#: contour_vox``). Narrower boxes are drawn whole: 4 mm nodules drawn a voxel narrower were dropped by the quality
#: gate on every redraw in 19 of 60 seeds and lobes of the shared 3 mm CT (half-contrast / label diameter above
#: 1.15), against 2 of 60 drawn in the full box.
CONTOUR_MIN_SIDE = 6
#: Box side (voxels) from which a body is drawn whole again: a voxel is little there, and LIDC's thin-slice
#: nodules in boxes >= 12 mm fill them as procedural ones drawn whole do (at 1 mm, 40: equivalent diameter / box
#: 0.88, procedural 0.89, a voxel narrower 0.84), while on the shared 3 mm CT the larger ones already came out
#: smaller than LIDC's for their box (0.78 against 0.90).
CONTOUR_MAX_SIDE = 12
#: Spiculated nodules in lung: a body nearly filling the box (LIDC's spiculated nodules fill their boxes almost
#: as smooth ones do: equivalent diameter / box 0.85-0.96 vs 0.91-0.94), deeply lobulated (x the round amplitude;
#: elsewhere SPICULE_LOBES), with strands (x THICKNESS) that keep half their base to the tip (TAPER: share of
#: the base lost by the tip). LIDC's spiculated nodules on a 3 mm grid: convexity 0.81 at 9-13 mm where smooth
#: ones have 0.93, 0.83 vs 0.90 at 13-20 mm, 0.89 vs 0.94 at 6-9 mm. Lobes 2.0 and strands x 1.5 were enough
#: while smooth nodules' fine bumps were smoothed over 1.5 mm; on the voxel floor (LUNG_FINE_BUMP_MIN_MM) smooth
#: nodules are less convex and bench_lidc_compare's spiculated - smooth pairs (seeds 0-3) fell to -0.01, -0.09,
#: -0.08, -0.03 (LIDC -0.11); lobes 3.0 and strands x 2.0 give -0.06, -0.10, -0.17, -0.08 (lobes 3.5 alone:
#: -0.09, -0.12, -0.12, -0.01).
LUNG_SPICULE_BODY = 0.8
LUNG_SPICULE_THICKNESS = 2.0
SPICULE_LOBES = 1.5
LUNG_SPICULE_LOBES = 3.0
SPICULE_TAPER = 1.0
LUNG_SPICULE_TAPER = 0.5
#: A strand's half-width at the body (mm, before x THICKNESS): this share of the box's smallest semi-axis, at
#: least the floor. In lung thinner, on a larger body: with the same box and seed (bench_lidc_compare's design
#: pairs), 0.6 bodies with strands floored at 1.5 mm filled 9-16 mm boxes with a rounded blob as convex as a
#: smooth nodule (convexity +0.05, -0.03, -0.02 against smooth at 9, 12, 16 mm boxes); these measure -0.05,
#: -0.10, -0.04 (3 seeds per size).
SPICULE_BASE_SHARE = 0.25
SPICULE_BASE_MIN_MM = 1.5
LUNG_SPICULE_BASE_SHARE = 0.15
LUNG_SPICULE_BASE_MIN_MM = 0.75
#: Deformation multiplier in lung: LIDC nodules on a 3 mm grid have sphericity median 0.84 and convexity 0.92;
#: with the abdominal amplitudes ours had 0.90 and 0.97 (a small nodule's bumps are sub-voxel and a 3 mm grid
#: rounds them off). 3.2 gives round nodules an amplitude of 0.35 of the radius (bench_lidc_compare: 0.85-0.87 /
#: 0.94-0.96). 4.2 brought the medians to 0.82-0.86 / 0.91-0.94 but the population further from LIDC (80
#: nodules, seed 0: AUC 0.79 / 0.81 against 0.75 / 0.73, 3 nodules dropped by the gate against none). With the
#: fine bumps smoothed in mm (FINE_BUMP_MIN_MM), 3.6 lowered the pooled AUC of 3 seeds (120 nodules, logistic /
#: forest 0.770 / 0.825 -> 0.727 / 0.798) but halved the attribute effects (seed 0: spiculated - smooth convexity
#: -0.07 -> -0.03, poorly defined - sharp margin +0.17 -> +0.06 mm; LIDC -0.11, +0.20).
LUNG_DEFORMATION = 3.2
#: Least smoothing (mm, Gaussian sigma) of the surface's finer bumps. It was 0.7 voxel, so the shape depended on
#: the grid, and on a 1 mm grid it was near-white noise that notched small nodules. bench_thin_slice_shape (seeds
#: 0 / 1; LIDC's thin-slice solid nodules < 7 mm at 1 mm: convexity 0.91 [0.87, 0.93], sphericity 0.88 [0.84,
#: 0.90]): convexity 0.85 / 0.85 with the voxel floor, 0.88 / 0.90 at 1.5 mm; 1.0 mm left one of the two outside
#: the IQR on each seed. Lesions >= 20 mm (0.15 of the semi-axis binds) and grids >= 2.1 mm (0.7 voxel) are unchanged.
FINE_BUMP_MIN_MM = 1.5
#: The same in lung: none (the 0.7 voxel floor). A lung nodule's label is not its mask but the reader's contour
#: traced around it slice by slice (``write_back.contour_spread``), which fills the voxel-scale notches the raw
#: mask has at 1 mm, and on a 3 mm grid the in-plane bumps smoothed over 1.5 mm left nodules too regular.
#: The floor alone: bench_lidc_compare (4 seeds, 160 vs 600 nodules pooled, logistic / forest) 0.705 / 0.794
#: with 1.5 mm, 0.662 / 0.779 without, but the spiculation and margin effects fell below a quarter of LIDC's on
#: 3 of 4 seeds (LUNG_SPICULE_LOBES, texture.LUNG_MARGIN_OUT_DEPTH_SHARE restore them); bench_thin_slice_shape
#: (seeds 0 / 1 / 2): 6 / 5 / 4 of 6 medians inside LIDC's IQR with 1.5 mm, 6 / 6 / 6 without.
LUNG_FINE_BUMP_MIN_MM = 0.0
#: HU window a protruding lesion may grow into outside its organ: soft tissue only (not fat, air or bone).
PROTRUDE_HU = (-30.0, 150.0)
#: How far (fraction of the smallest semi-axis, mm) an exophytic lesion may reach out of its organ.
PROTRUDE_REACH = 0.5
#: Least fraction of an exophytic lesion inside its organ (else it is cut back to the organ's surface).
MIN_INSIDE = 0.5
#: A lesion of a hollow organ stays within this fraction of the organ's largest depth: the lumen stays open.
LUMEN_KEEP = 0.67


class ProceduralMaskEngine(MaskEngine):
    """Weight-free mask engine following the report's shape, size and cavity."""

    name = "procedural"

    def __init__(
        self,
        *,
        punctate_max_mm: float = 10.0,
        wall_thickness_mm: tuple[float, float] = (8.0, 20.0),
        body_threshold_hu: float = -500.0,
        deformation_scale: float = 0.4,
        satellite_probability: float = 0.3,
    ) -> None:
        self.punctate_max_mm = float(punctate_max_mm)
        self.wall_thickness_mm = (float(wall_thickness_mm[0]), float(wall_thickness_mm[1]))
        self.body_threshold_hu = float(body_threshold_hu)
        self.deformation_scale = float(deformation_scale)
        self.satellite_probability = float(satellite_probability)

    def provenance(self) -> dict:
        return {
            "engine": self.name,
            "options": {
                "punctate_max_mm": self.punctate_max_mm,
                "wall_thickness_mm": list(self.wall_thickness_mm),
                "body_threshold_hu": self.body_threshold_hu,
                "deformation_scale": self.deformation_scale,
                "satellite_probability": self.satellite_probability,
            },
        }

    def generate_mask(self, ctx: LesionContext, bbox: BBox, report: Any, rng: np.random.Generator) -> np.ndarray:
        spec = lesion_spec(report)
        rule = cavity_rule(spec.cavity, ctx.organ_name)
        shape = ctx.ct.shape
        narrowing = "narrowing" in str(getattr(report, "shape", "") or "").lower() and rule != PROTRUDING
        if narrowing:  # a ring around the whole circumference of the segment: twice the box, thickness capped
            bbox = BBox(bbox.center, tuple(2 * int(s) for s in bbox.size))  # type: ignore[arg-type]
        spacing = np.asarray(ctx.spacing, dtype=np.float64)
        crop = grow_slices(bbox.start(shape), bbox.stop(shape), (1, 1, 1), shape)
        if any(sl.stop <= sl.start for sl in crop):
            raise ConfigError(f"bbox {bbox.to_dict()} lies outside the volume of shape {shape}")
        crop_shape = tuple(sl.stop - sl.start for sl in crop)
        origin = np.array([sl.start for sl in crop], dtype=np.float64)

        centre, semi, inner = self._geometry(bbox, spec, shape, crop, origin, spacing)
        # the body is drawn in a box narrower by the contour the writer grows around it (a reader's, about a
        # voxel in-plane for a lung nodule): the label then spans the box; spicules still reach the box itself
        narrower = tuple(int(s) - int(round(g)) if CONTOUR_MIN_SIDE <= int(s) < CONTOUR_MAX_SIDE else int(s)
                         for s, g in zip(bbox.size, ctx.contour_vox))
        b_centre, b_semi, b_inner = ((centre, semi, inner) if narrower == tuple(bbox.size) else
                                     self._geometry(BBox(bbox.center, narrower), spec, shape, crop, origin, spacing))
        lung = is_lung(ctx.organ_name)
        body = b_semi * (LUNG_SPICULE_BODY if lung else SPICULE_BODY) if spec.spiculated else b_semi
        lesion = self._level_set(crop_shape, b_centre, body, spec, rng, b_inner,
                                 roughness=LUNG_DEFORMATION if lung else 1.0,
                                 spicule_lobes=LUNG_SPICULE_LOBES if lung else SPICULE_LOBES, spacing=spacing,
                                 fine_bump_min_mm=LUNG_FINE_BUMP_MIN_MM if lung else FINE_BUMP_MIN_MM)
        if spec.spiculated and lesion.any():  # thin strands radiating out to the box: a low convexity
            lesion |= self._spicules(lesion, centre, semi, spacing, rng,
                                     thickness=LUNG_SPICULE_THICKNESS if lung else 1.0,
                                     taper=LUNG_SPICULE_TAPER if lung else SPICULE_TAPER,
                                     base_share=LUNG_SPICULE_BASE_SHARE if lung else SPICULE_BASE_SHARE,
                                     base_min_mm=LUNG_SPICULE_BASE_MIN_MM if lung else SPICULE_BASE_MIN_MM) & inner

        organ = ctx.organ_mask[crop]
        hollow = is_hollow(ctx.organ_name)
        depth = ndimage.distance_transform_edt(organ, sampling=tuple(spacing)) if hollow else None
        if spec.shape == "wall" or rule == WALL:
            band = self._wall_band(organ, semi, spacing, rng, narrowing=narrowing, depth=depth) & lesion
            if band.any():  # a box inside the lumen has no wall: keep the polypoid mass instead of nothing
                lesion = band
        if hollow and depth is not None and depth.max() > 0:  # a hollow organ keeps its lumen open
            lesion &= depth <= LUMEN_KEEP * float(depth.max())
        if rule == PROTRUDING:  # leaves the organ only into unlabelled soft tissue near it: not fat, air, bone
            ct = ctx.ct[crop]
            free = (np.asarray(ctx.organ_seg[crop]) == 0) & (ct >= PROTRUDE_HU[0]) & (ct <= PROTRUDE_HU[1])
            reach = max(PROTRUDE_REACH * float(np.min(semi * spacing)), 2.0 * float(np.max(spacing)))
            near = ndimage.distance_transform_edt(~organ, sampling=tuple(spacing)) <= reach
            lesion &= organ | (free & near & (ct > self.body_threshold_hu))
        else:  # within the parenchyma, within the lumen (the organ mask includes it) and along the wall
            lesion &= organ
        lesion &= ~ctx.occupied[crop]
        if not lesion.any():
            raise ConfigError(
                f"procedural mask for organ {ctx.organ_name!r} is empty: bbox {bbox.to_dict()} has no free organ "
                f"voxel for cavity rule {rule!r} (occupied or outside the organ)"
            )
        lesion = largest_component(lesion, prefer=np.round(centre).astype(int))
        if rule == PROTRUDING and (lesion & organ).sum() < MIN_INSIDE * lesion.sum():
            lesion = largest_component(lesion & (organ | ndimage.binary_dilation(organ, iterations=1)),
                                       prefer=np.round(centre).astype(int))
        if spec.shape == "irregular" and rule != WALL and rng.random() < self.satellite_probability:
            lesion |= self._satellites(lesion, organ & inner & ~ctx.occupied[crop], semi, spacing, rng)
        out = np.zeros(shape, bool)
        out[crop] = lesion
        return out

    def _geometry(self, bbox: BBox, spec: Any, shape: tuple[int, ...], crop: tuple[slice, ...], origin: np.ndarray,
                  spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The box's geometric centre and semi-axes (crop voxels) and the crop's voxels inside it and a voxel off
        the volume's border (the shape must fit INSIDE: it shrinks rather than being clipped flat by a face)."""
        centre = np.asarray(bbox.start(), dtype=np.float64) + (np.asarray(bbox.size) - 1) / 2.0 - origin
        semi = np.maximum(np.asarray(bbox.size, dtype=np.float64) / 2.0, 0.5)
        # a box cut by the volume's edge: centre the shape on the part inside (a voxel off the edge), smaller
        lo = np.maximum(np.asarray(bbox.start(), dtype=np.float64), 1.0)
        hi = np.minimum(np.asarray(bbox.start(), dtype=np.float64) + np.asarray(bbox.size), np.asarray(shape) - 1.0)
        cut = (lo > np.asarray(bbox.start())) | (hi < np.asarray(bbox.start()) + np.asarray(bbox.size))
        if cut.any() and (hi > lo).all():
            centre = np.where(cut, (lo + hi - 1) / 2.0 - origin, centre)
            semi = np.where(cut, np.maximum((hi - lo) / 2.0, 0.5), semi)
        if spec.shape == "punctate":
            semi = np.minimum(semi, np.maximum(self.punctate_max_mm / 2.0 / spacing, 0.5))
        in_box = np.zeros(tuple(sl.stop - sl.start for sl in crop), bool)
        in_box[tuple(slice(max(a - o, 0), b - o)
                     for a, b, o in zip(bbox.start(shape), bbox.stop(shape), origin.astype(int)))] = True
        return centre, semi, in_box & self._off_border(crop, shape)

    @staticmethod
    def _spicules(body: np.ndarray, centre: np.ndarray, semi: np.ndarray, spacing: np.ndarray,
                  rng: np.random.Generator, thickness: float = 1.0, taper: float = SPICULE_TAPER,
                  base_share: float = SPICULE_BASE_SHARE, base_min_mm: float = SPICULE_BASE_MIN_MM) -> np.ndarray:
        """3-7 tapering strands from the body's surface out to near the box's ellipsoid (spiculated margin)."""
        grid = np.indices(body.shape, dtype=np.float32)
        offset = np.stack([(grid[a] - centre[a]) * spacing[a] for a in range(3)])  # mm from the centre
        out = np.zeros(body.shape, bool)
        for _ in range(int(rng.integers(3, 8))):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            # length: where the ray leaves the box's inscribed ellipsoid (mm), a little short of it
            length = 0.9 / float(np.sqrt(np.sum((direction / (semi * spacing)) ** 2)))
            along = np.clip(np.tensordot(direction, offset, axes=1), 0.0, length)
            across = np.sqrt(np.sum((offset - along[None] * direction[:, None, None, None]) ** 2, axis=0))
            # thick at the base in proportion to the body (real spicules of a 20 mm nodule are 2-3 mm wide at
            # the surface and survive a 3 mm grid; 1 mm strands vanished there: convexity effect -0.02, real -0.11)
            base = thickness * max(base_min_mm, base_share * float(np.min(semi * spacing)))
            radius = 0.5 * float(spacing.max()) + base * (1.0 - taper * along / length)
            out |= (across <= radius) & (along > 0)
        return out

    @staticmethod
    def _off_border(crop: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Crop voxels not on the volume's outermost layer (a lesion there would be cut flat by the scan's edge)."""
        ok = np.ones(tuple(sl.stop - sl.start for sl in crop), bool)
        for ax, (sl, n) in enumerate(zip(crop, shape)):
            index = [slice(None)] * 3
            if sl.start == 0:
                index[ax] = slice(0, 1)
                ok[tuple(index)] = False
            if sl.stop == n:
                index[ax] = slice(-1, None)
                ok[tuple(index)] = False
        return ok

    @staticmethod
    def _satellites(lesion: np.ndarray, allowed: np.ndarray, semi: np.ndarray, spacing: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
        """One or two small nodules 1-4 mm beside the main mass (inside ``allowed``: organ and box), as infiltrative
        tumours show."""
        out = np.zeros(lesion.shape, bool)
        gap = ndimage.distance_transform_edt(~lesion, sampling=tuple(spacing))
        grid = np.ogrid[tuple(slice(0, n) for n in lesion.shape)]
        for _ in range(int(rng.integers(1, 3))):
            radius_mm = float(rng.uniform(0.15, 0.3) * np.min(semi * spacing))
            if radius_mm < 1.5 * float(np.max(spacing)):
                continue
            ring = allowed & (gap > radius_mm + 1.0) & (gap <= radius_mm + 4.0)
            candidates = np.flatnonzero(ring)
            if candidates.size == 0:
                continue
            c = np.unravel_index(candidates[rng.integers(candidates.size)], lesion.shape)
            ball = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing)) <= radius_mm**2
            out |= ball & allowed
        return out

    def _level_set(
        self, crop_shape: tuple[int, ...], centre: np.ndarray, semi: np.ndarray, spec: Any, rng: np.random.Generator,
        inner: np.ndarray | None = None, roughness: float = 1.0, spicule_lobes: float = SPICULE_LOBES,
        spacing: Sequence[float] = (1.0, 1.0, 1.0), fine_bump_min_mm: float | None = None,
    ) -> np.ndarray:
        """The deformed ellipsoid: ``r (1 + A) + A tanh(noise) <= 1`` with ``r`` the normalized radius.

        The tanh keeps every bump within ``r <= 1``. Because inward bumps shrink the extent, the semi-axes are
        widened by the measured shortfall (same noise field, at most 50 %); whenever the shape would then reach
        outside ``inner`` (the box less a voxel of margin) the widening is taken back step by step, and the
        semi-axes shrink below the box if needed: the shape shrinks rather than being clipped flat.
        """
        grid = np.ogrid[tuple(slice(0, n) for n in crop_shape)]
        amplitude = DEFORMATION[spec.shape] * (spicule_lobes if spec.spiculated else 1.0) * roughness
        # coarse lobes plus finer bumps (multi-scale lobulation)
        bumps = 0.85 * smooth_noise(crop_shape, self.deformation_scale * semi, rng)
        # the finer bumps are smoothed over at least FINE_BUMP_MIN_MM, a physical scale: a floor in voxels drew
        # a different surface on every grid (and on a 1 mm grid near-white noise, a ragged small nodule)
        floor_mm = FINE_BUMP_MIN_MM if fine_bump_min_mm is None else fine_bump_min_mm
        fine = np.maximum(0.7, floor_mm / np.asarray(spacing, dtype=np.float64))
        bumps += 0.55 * smooth_noise(crop_shape, np.maximum(0.15 * semi, fine), rng)
        if spec.spiculated:  # thin high-frequency spikes on top of the lobulation
            bumps = 0.7 * bumps + 0.7 * smooth_noise(crop_shape, 0.1 * semi + 0.5, rng)
        bumps = amplitude * np.tanh(bumps)

        def level(axes: np.ndarray) -> np.ndarray:
            radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes))).astype(np.float32)
            return radius * (1.0 + amplitude) + bumps <= 1.0

        def profile(mask: np.ndarray, axis: int) -> np.ndarray:
            return mask.any(axis=tuple(b for b in range(3) if b != axis))

        def fits(mask: np.ndarray) -> bool:
            return inner is None or not (mask & ~inner).any()

        lesion = level(semi)
        gain = np.ones(3)
        if lesion.any():
            extent = np.array([np.ptp(i) + 1 for i in np.nonzero(lesion)], dtype=np.float64)
            gain = np.clip(2.0 * semi / extent, 1.0, 1.5)
            if gain.max() > 1.02:
                lesion = level(semi * gain)
        for _ in range(16):  # shrink the axes that reach out of the box until the shape sits inside it
            if fits(lesion) or not lesion.any():
                break
            over = np.array([(profile(lesion, a) & ~profile(inner, a)).any() for a in range(3)])
            gain = np.where(over, np.maximum(gain * 0.93, 0.3), gain)
            lesion = level(semi * gain)
        if inner is not None:
            lesion &= inner
        return lesion

    def _wall_band(self, organ: np.ndarray, semi: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
                   *, narrowing: bool = False, depth: np.ndarray | None = None) -> np.ndarray:
        """Organ voxels within a pathological wall thickness of the organ surface (lumen gas included).

        The thickness follows the lesion's size within ``wall_thickness_mm``; a narrowing keeps at least a
        third of the local lumen radius open so the lumen narrows rather than vanishes.
        """
        if depth is None:
            depth = ndimage.distance_transform_edt(organ, sampling=tuple(spacing))
        low, high = self.wall_thickness_mm
        thickness = float(np.clip(0.6 * float(np.min(semi * spacing)), low, high))
        if narrowing and depth.max() > 0:
            thickness = min(thickness, 0.67 * float(depth.max()))
        variation = 1.0 + 0.2 * smooth_noise(organ.shape, 0.5 * semi, rng)
        return organ & (depth <= thickness * variation)
