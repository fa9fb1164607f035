"""Lesion bounding boxes and their placement inside an organ, following the original's cavity rules.

Cavity rules (the four values of ``ld_augment.organs.CAVITY_VALUES``):

* "within the lumen of a hollow organ": the box's INSCRIBED ELLIPSOID lies inside the lumen, i.e. the organ
  minus a wall band of ``wall_mm`` (found with a Euclidean distance transform, which is an erosion by a ball).
* "wall thickening": the box CENTRE lies on the wall band (organ minus lumen); the box may leave the organ.
* "within the parenchymal organ": the box's inscribed ellipsoid lies inside the organ (the procedural mask
  engine keeps every bump inside that ellipsoid), except that a ``capsule_fraction`` of lesions is drawn
  subcapsular: the ellipsoid reaches the organ's surface and is cut flat by it, so the lesion touches the
  capsule as real liver and kidney tumours often do. Requiring the whole box instead (as before) kept every
  kidney or spleen lesion away from the capsule and far smaller than the organ allows.
* "protruding from the parenchymal organ": the centre lies inside the organ but near its surface (normalized
  depth below ``PROTRUDE_DEPTH``), so part of the lesion grows out of it (exophytic).

Depth is measured in the ellipsoid's own metric: a Euclidean distance transform with sampling ``1 / semi-axis``
gives, for every voxel, the normalized distance to the nearest voxel outside the region, and an ellipsoid
centred there fits iff that distance is >= 1. The volume border counts as outside. Boxes never overlap
another placed box or an ``occupied`` voxel (a box dilation with a separable max filter). Feasible centres are
computed for all voxels at once, so placement never loops over candidate positions; a centre is then drawn
uniformly from the feasible set with the caller's ``rng``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.errors import ConfigError, InputError
from ld_augment.organs.registry import CAVITY_VALUES, default_cavity

log = logging.getLogger(__name__)

Triple = tuple[int, int, int]

#: Canonical rule names, keyed by keywords that identify the original's cavity texts.
LUMEN, WALL, WITHIN, PROTRUDING = "lumen", "wall", "within", "protruding"
#: Normalized depth band of a subcapsular centre (the ellipsoid pokes up to 25 % of a semi-axis past the capsule).
SUBCAPSULAR_DEPTH = (0.7, 0.95)
#: Least normalized depth of a lesion too large to lie deep (it flattens against the capsule by <= 15 %).
SUBCAPSULAR_FIT = 0.85
#: Normalized depth band of a protruding (exophytic) centre: inside the organ, 15-65 % of the lesion outside it.
PROTRUDE_DEPTH = (0.05, 0.6)


@dataclass(frozen=True)
class BBox:
    """An axis-aligned lesion box in voxel coordinates: ``start = center - size // 2``, ``stop = start + size``.

    The box is stored unclipped (as the report records it); ``start``/``stop``/``slices`` clip to a volume
    when given its shape, so boxes near the border never index outside the array.
    """

    center: Triple
    size: Triple

    def __post_init__(self) -> None:
        center = tuple(int(c) for c in self.center)
        size = tuple(int(s) for s in self.size)
        if len(center) != 3 or len(size) != 3:
            raise ConfigError(f"BBox needs 3 centre and 3 size values, got center={self.center} size={self.size}")
        if min(size) < 1:
            raise ConfigError(f"BBox size must be >= 1 voxel on every axis, got {size}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "size", size)

    def start(self, shape: Sequence[int] | None = None) -> Triple:
        """First voxel of the box; clipped to ``[0, shape]`` when ``shape`` is given."""
        start = tuple(c - s // 2 for c, s in zip(self.center, self.size))
        if shape is not None:
            start = tuple(min(max(a, 0), int(n)) for a, n in zip(start, shape))
        return start  # type: ignore[return-value]

    def stop(self, shape: Sequence[int] | None = None) -> Triple:
        """One past the last voxel of the box; clipped to ``[0, shape]`` when ``shape`` is given."""
        stop = tuple(c - s // 2 + s for c, s in zip(self.center, self.size))
        if shape is not None:
            stop = tuple(min(max(b, 0), int(n)) for b, n in zip(stop, shape))
        return stop  # type: ignore[return-value]

    def slices(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """Index of the box inside a volume of ``shape`` (clipped; may be empty if the box lies outside)."""
        return tuple(slice(a, b) for a, b in zip(self.start(shape), self.stop(shape)))  # type: ignore[return-value]

    def overlaps(self, other: BBox) -> bool:
        """True when the two (unclipped) boxes share at least one voxel."""
        return all(a0 < b1 and b0 < a1 for a0, a1, b0, b1 in zip(self.start(), self.stop(), other.start(), other.stop()))

    def to_dict(self) -> dict[str, list[int]]:
        return {"center": list(self.center), "size": list(self.size)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BBox:
        unknown = set(data) - {"center", "size"}
        if unknown or not {"center", "size"} <= set(data):
            raise ConfigError(f"a bbox needs exactly the keys 'center' and 'size', got {sorted(data)}")
        return cls(tuple(data["center"]), tuple(data["size"]))  # type: ignore[arg-type]


def cavity_rule(cavity: str | None, organ_name: str = "organ") -> str:
    """Map a cavity text of the original (or None: ``default_cavity(organ_name)``) to LUMEN/WALL/WITHIN/PROTRUDING."""
    if cavity is None or not str(cavity).strip():
        cavity = default_cavity(organ_name)
    text = str(cavity).strip().strip(",").strip().lower()
    for rule, key in ((LUMEN, "lumen"), (WALL, "wall"), (PROTRUDING, "protruding"), (WITHIN, "within")):
        if key in text:
            return rule
    raise ConfigError(f"unknown cavity {cavity!r} for organ {organ_name!r}; valid values: {sorted(CAVITY_VALUES)}")


def wall_and_lumen(organ_mask: np.ndarray, spacing: Sequence[float], wall_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a hollow organ into its wall band (within ``wall_mm`` of the outside) and its lumen (the rest)."""
    depth = ndimage.distance_transform_edt(organ_mask, sampling=tuple(float(s) for s in spacing))
    lumen = depth > wall_mm
    return organ_mask & ~lumen, lumen


def _organ_crop(organ_mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding slices of the organ grown by ``margin`` voxels: all per-organ work happens on this crop."""
    coords = [np.flatnonzero(organ_mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return tuple(
        slice(max(int(c[0]) - m, 0), min(int(c[-1]) + 1 + m, n)) for c, m, n in zip(coords, margin, organ_mask.shape)
    )


def ellipsoid_depth(region: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Normalized distance (units of the box's semi-axes) from each region voxel to the nearest outside voxel.

    An ellipsoid with the box's semi-axes centred at a voxel lies inside ``region`` iff this is >= 1. The
    region is padded with one outside layer so the volume border counts as outside.
    """
    padded = np.pad(region, 1, constant_values=False)
    # semi-axis + half a voxel: an even-sized box's ellipsoid is centred half a voxel off its centre voxel
    sampling = tuple(1.0 / (float(s) / 2.0 + 0.5) for s in size)
    depth = ndimage.distance_transform_edt(padded, sampling=sampling)
    return depth[1:-1, 1:-1, 1:-1]


def _feasible_centres(region: np.ndarray, blocked: np.ndarray, size: Triple, rule: str,
                      band: tuple[float, float] | None = None) -> np.ndarray:
    """Voxels where a box of ``size`` centred there obeys ``rule`` on ``region`` and touches no ``blocked`` voxel.

    LUMEN/WITHIN: the inscribed ellipsoid fits (normalized depth >= 1), or, with ``band``, the depth lies in
    ``[band[0], band[1])`` (subcapsular). PROTRUDING: depth in PROTRUDE_DEPTH. WALL: the centre on the region.
    Dilating ``blocked`` by the box (``maximum_filter``; outside the array is free) marks every centre whose
    box would touch it.
    """
    if rule in (LUMEN, WITHIN, PROTRUDING):
        depth = ellipsoid_depth(region, size)
        low, high = band if band is not None else ((1.0, np.inf) if rule != PROTRUDING else PROTRUDE_DEPTH)
        ok = region & (depth > low) & (depth <= high)
    else:
        ok = region.copy()
    if blocked.any():
        ok &= ~ndimage.maximum_filter(blocked, size=size, mode="constant", cval=False)
    return ok


def place_lesions(
    organ_mask: np.ndarray,
    sizes: Iterable[Sequence[int]],
    *,
    cavity: str | None,
    rng: np.random.Generator,
    occupied: np.ndarray | None = None,
    shrink: bool = False,
    organ_name: str = "organ",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    wall_mm: float = 3.0,
    shrink_factor: float = 0.85,
    max_tries: int = 30,
    capsule_fraction: float = 0.3,
) -> list[BBox]:
    """Place one box per requested size inside ``organ_mask`` following ``cavity``'s rule (see module doc).

    ``sizes`` are (x, y, z) voxel extents, placed in the given order; the k-th box belongs to the k-th size.
    With ``shrink=True`` a size that does not fit is multiplied by ``shrink_factor`` (at most ``max_tries``
    times, never below 1 voxel) until it fits; the returned box then carries the smaller size, which callers
    must write back into the report. ``capsule_fraction`` is the chance that a "within" lesion is subcapsular
    (falls back to a deep position when no subcapsular one is free). Raises InputError when the organ is absent and ConfigError when a size
    cannot be placed (naming the organ, the sizes and the organ's extent).
    """
    organ_mask = np.asarray(organ_mask, dtype=bool)
    if organ_mask.ndim != 3:
        raise InputError(f"organ mask for {organ_name!r} must be 3-D, got shape {organ_mask.shape}")
    requested = [tuple(int(v) for v in s) for s in sizes]
    for size in requested:
        if len(size) != 3 or min(size) < 1:
            raise ConfigError(f"lesion size must be 3 positive voxel counts (x, y, z), got {size}")
    if not organ_mask.any():
        raise InputError(f"organ {organ_name!r} is absent from the segmentation: no voxel to place {requested} in")
    rule = cavity_rule(cavity, organ_name)
    blocked_full = np.zeros(organ_mask.shape, bool) if occupied is None else np.asarray(occupied, dtype=bool).copy()
    if blocked_full.shape != organ_mask.shape:
        raise InputError(f"occupied map shape {blocked_full.shape} differs from the organ mask {organ_mask.shape}")

    margin = tuple(max((s[ax] for s in requested), default=1) for ax in range(3))
    crop = _organ_crop(organ_mask, margin)
    organ = organ_mask[crop]
    offset = np.array([sl.start for sl in crop])
    if rule in (LUMEN, WALL):
        wall, lumen = wall_and_lumen(organ, spacing, wall_mm)
        region = lumen if rule == LUMEN else wall
    else:
        region = organ
    blocked = blocked_full[crop]

    boxes: list[BBox] = []
    for size in requested:
        box = None
        if rule == WITHIN and rng.random() < capsule_fraction:
            box = _place_one(region, blocked, size, rule, rng, False, shrink_factor, 1, band=SUBCAPSULAR_DEPTH)
        if box is None:
            box = _place_one(region, blocked, size, rule, rng, shrink, shrink_factor, max_tries)
        if box is None:
            extent = tuple(int(sl.stop - sl.start) for sl in _organ_crop(organ_mask, (0, 0, 0)))
            placed = [b.size for b in boxes]
            raise ConfigError(
                f"cannot place a lesion of size {size} (x, y, z voxels) in organ {organ_name!r} with cavity "
                f"{rule!r}: the organ's extent is {extent} voxels ({int(organ_mask.sum())} voxels), already placed "
                f"{placed}, requested sizes {requested}. Use smaller sizes or shrink=True."
            )
        if box.size != size:
            log.warning("lesion size %s shrunk to %s to fit organ %r (%s)", size, box.size, organ_name, rule)
        centre = tuple(int(c) for c in np.add(box.center, offset))
        boxes.append(BBox(centre, box.size))  # type: ignore[arg-type]
        blocked[box.slices(blocked.shape)] = True
    return boxes


def _place_one(
    region: np.ndarray,
    blocked: np.ndarray,
    size: Triple,
    rule: str,
    rng: np.random.Generator,
    shrink: bool,
    shrink_factor: float,
    max_tries: int,
    band: tuple[float, float] | None = None,
) -> BBox | None:
    """Draw one feasible box (crop coordinates), shrinking the size step by step when allowed."""
    current = size
    for _ in range(max(1, max_tries) if shrink else 1):
        ok = _feasible_centres(region, blocked, current, rule, band)
        if not ok.any() and rule == WITHIN and band is None:  # too big to lie deep: against the capsule
            ok = _feasible_centres(region, blocked, current, rule, (SUBCAPSULAR_FIT, np.inf))
        candidates = np.flatnonzero(ok)
        if candidates.size:
            centre = np.unravel_index(candidates[rng.integers(candidates.size)], ok.shape)
            return BBox(tuple(int(c) for c in centre), current)  # type: ignore[arg-type]
        smaller = tuple(max(1, int(np.floor(s * shrink_factor))) for s in current)
        if smaller == current:
            break
        current = smaller  # type: ignore[assignment]
    return None


def bbox_map(shape: Sequence[int], boxes: Sequence[BBox]) -> np.ndarray:
    """Label map of the boxes: 0 outside, k inside the k-th box (1-based); later boxes win where they overlap."""
    dtype = np.uint8 if len(boxes) < 256 else np.int32
    out = np.zeros(tuple(int(n) for n in shape), dtype=dtype)
    for k, box in enumerate(boxes, start=1):
        out[box.slices(out.shape)] = k
    return out
