"""Per-lesion quality gate: does a rendered lesion show what its report asked for, where its label says?

Measured on a crop around the lesion, in the grid given (the standardized grid inside ``synthesize_case``;
the source grid in the realism benchmark), against limits that are data (``GateLimits``):

* density direction and magnitude: the core's contrast to the organ's parenchyma has the report's sign
  (hypo/fluid below, hyper and any lung lesion above, iso close) and at least half the requested contrast;
* core value: the core's median within ``core_tolerance_hu`` of the requested CT value;
* inside the organ: >= ``min_inside`` of the label (exophytic lesions: >= ``min_inside_exophytic``, and the part
  outside lay in soft tissue before, not fat, air or bone);
* no fat, gas or bone under a soft-tissue (or fluid, or lytic) lesion's label;
* label = visible extent: the half-contrast region around the label has an equivalent diameter within
  ``visible_ratio`` of the label's (a label larger than the lesion teaches over-segmentation; a halo
  beyond it, under-segmentation);
* an edge of its own: the core stands out from the organ within ``LOCAL_SHELL_MM`` of the label as it was
  before (at least ``min_local_contrast_share`` of the requested contrast), not only from the wider
  neighbourhood (a lesion drawn into a vessel or an existing lesion as dark as itself);
* no flat faces: the largest end slice along any axis, as a fraction of the lesion's largest cross-section
  (a box-clipped face keeps its area slice after slice, a curved cap grows from a point);
* seen where it is written (``source_grid_checks``, in a coarser source grid): a lung lesion's core keeps at
  least ``min_source_contrast_share`` of the drawn contrast (a 4 mm nodule straddling 3 mm voxels came out
  38 HU above lung, a label over nothing visible), and no label is wider than the lesion seen there.

A box with a halo, a label without contrast, a fat core and a lesion floating outside its organ each fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import expected_contrast_sign, is_bone, is_lung, lesion_spec
from ld_augment.engines.procedural.density import PARENCHYMA_WINDOW, parenchyma_hu
from ld_augment.engines.procedural.fields import CORE_SHARE, SOLID_CORE_SHARE, core_region, mask_slices
from ld_augment.placement.bboxes import PROTRUDING, cavity_rule


@dataclass(frozen=True)
class GateLimits:
    core_tolerance_hu: float = 20.0
    min_contrast_hu: float = 4.0  # least |contrast| of a lesion whose word says it differs from its organ
    iso_tolerance_hu: float = 15.0
    min_inside: float = 0.8
    min_inside_exophytic: float = 0.5
    min_outside_soft: float = 0.8  # of an exophytic lesion's outside part, soft tissue before synthesis
    max_foreign: float = 0.02  # fat / gas / bone voxels under a soft-tissue label
    visible_ratio: tuple[float, float] = (0.9, 1.15)  # half-contrast / label equivalent diameter
    max_flat_face: float = 0.15
    # least share of the drawn core contrast the written core keeps in a coarser source grid (LIDC nodules
    # measured at 1 and 3 mm: 95 % of those 4-6 mm keep >= 0.22, 95 % of those 6-9 mm >= 0.30)
    min_source_contrast_share: float = 0.2
    # least share of the requested contrast the core shows against the tissue right around it (LOCAL_SHELL_MM)
    # before synthesis: a lesion drawn into a structure already as dark (a vessel, an unlabelled lesion) has no
    # edge of its own, and its label names what was there
    min_local_contrast_share: float = 0.5


#: HU limits: fat/gas below, bone above (under a soft-tissue label); soft tissue window for exophytic growth.
FAT_BELOW_HU = -50.0
BONE_ABOVE_HU = 400.0
SOFT_TISSUE_HU = (-30.0, 150.0)
#: Least |core change| (HU) for which the half-contrast extent is measured (an isodense lesion has none).
VISIBLE_MIN_HU = 8.0
#: Smoothing (Gaussian sigma: mm, and at least this many voxels) of the change before finding half contrast.
VISIBLE_SMOOTH_MM = 0.9
VISIBLE_SMOOTH_VOX = 0.7
#: How a source-grid fade is reported (the pipeline redraws such a lesion centred on a source voxel).
FADES = "fades in the source grid"
#: Neighbourhood (mm) of the lesion in which the organ's parenchyma is measured.
NEIGHBOURHOOD_MM = 15.0
#: Shell (mm) of organ around the label whose tissue, before synthesis, the core must stand out from.
LOCAL_SHELL_MM = 6.0
#: How a lesion without an edge of its own is reported.
NO_EDGE = "no edge against the tissue around it"


def _past(value: float, *bounds: float) -> str:
    """``value`` with 2 decimals, or 3 where 2 would print a bound it failed ("0.15 (> 0.15)" read as a bug)."""
    text = f"{value:.2f}"
    return f"{value:.3f}" if any(text == f"{b:.2f}" for b in bounds) else text


def flat_face_fraction(mask: np.ndarray, min_extent: int = 8, reach: float = 1.5) -> float:
    """Largest planar end face along any axis, as a fraction of the lesion's largest cross-section there.

    Along an axis the cross-section areas A0, A1, ... from an end grow about linearly for a curved cap (they
    extrapolate to zero within a slice of the end), but stay flat where a plane cut the lesion. The plateau
    ``A0 - reach (A1 - A0)`` (0 when negative) measures the cut: ~0 for a ball or an ellipsoid at any grid
    offset, ~0.25 for a ball cut at 80 % of its radius, 1 for a box. Axes along which the lesion spans
    fewer than ``min_extent`` slices are not measured (a few-voxel lesion has no shape to judge).
    """
    worst = 0.0
    for ax in range(3):
        areas = mask.sum(axis=tuple(a for a in range(3) if a != ax)).astype(np.float64)
        idx = np.flatnonzero(areas)
        if idx.size == 0 or idx[-1] - idx[0] + 1 < min_extent:
            continue
        areas = areas[idx[0]:idx[-1] + 1]
        for profile in (areas, areas[::-1]):
            worst = max(worst, max(0.0, profile[0] - reach * (profile[1] - profile[0])) / areas.max())
    return float(worst)


def visible_extent_ratio(before: np.ndarray, after: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
                         reach_mm: float = 4.0, within: np.ndarray | None = None,
                         reference: np.ndarray | None = None, two_sided: bool = False) -> float | None:
    """Equivalent diameter of the half-contrast region around the label / the label's (None: no contrast).

    Read from the change (after - before, smoothed so new noise does not count), so tissue that
    was already darker or brighter (sinus fat beside a renal cyst) is not taken for lesion. The region:
    voxels changed at least half as much as the core, within ``reach_mm`` of the label and inside ``within``,
    connected to the core, holes filled.
    """
    spacing = tuple(float(s) for s in spacing)
    # under the label (re-synthesized, noisy) smoothed over ~1 mm and at least 0.7 voxel: on a coarse grid the
    # noise rivals a small contrast; outside it (no new noise but the margin's and partial volume's spill) only
    # over ~1 mm, so the smoothing itself does not push the half-contrast surface outwards
    change = (after - before).astype(np.float32)
    inner = ndimage.gaussian_filter(change, [max(VISIBLE_SMOOTH_MM / s, VISIBLE_SMOOTH_VOX) for s in spacing])
    outer = ndimage.gaussian_filter(change, [VISIBLE_SMOOTH_MM / s for s in spacing])
    delta = np.where(mask, inner, outer)
    core = core_region(mask, spacing)
    # ``reference``: the label's part whose contrast sets "half" (default the core); a part-solid nodule's
    # visible extent is its ground glass, not half its solid component's ~800 HU step
    contrast = float(np.median(delta[core if reference is None or not reference.any() else reference]))
    if abs(contrast) < VISIBLE_MIN_HU:
        return None
    near = ndimage.distance_transform_edt(~mask, sampling=spacing) <= reach_mm
    if two_sided:
        # a ring-enhancing or necrotic lesion is seen by its bright rim or its viable margin as much as by its
        # darkest part: a voxel counts where the change reaches half that of the label's weaker parts (its
        # lower-quartile |change|) either way (half the necrotic core's, one-sided, read an enhancing rim and
        # viable periphery as "not lesion": ring metastases at 0.74 of their labels on a portal-venous liver)
        visible = near & (np.abs(delta) >= 0.5 * float(np.percentile(np.abs(delta[mask]), 25)))
    else:
        visible = near & (np.sign(contrast) * delta >= 0.5 * abs(contrast))
    if within is not None:
        visible &= within
    labels, count = ndimage.label(visible)
    keep = np.unique(labels[core & visible])
    visible = np.isin(labels, keep[keep > 0]) if count else visible
    visible = ndimage.binary_fill_holes(visible)
    return float((visible.sum() / max(int(mask.sum()), 1)) ** (1.0 / 3.0))


def label_visible_ratio(before: np.ndarray, after: np.ndarray, mask: np.ndarray, organ: np.ndarray, spec: Any,
                        spacing: Sequence[float]) -> float | None:
    """The gate's half-contrast / label diameter of one lesion (``visible_extent_ratio`` on a crop around it, in
    its organ): a part-solid nodule's ground glass sets "half", a ring-enhancing or necrotic lesion is read
    two-sided. The same measure in the working grid and, for ``source_grid_checks``, in the source grid."""
    glass = mask & ~core_region(mask, spacing, SOLID_CORE_SHARE) if spec.density == "soft_tissue_ggo" else None
    return visible_extent_ratio(before, after, mask, spacing, within=organ | mask, reference=glass,
                                two_sided=spec.density == "ring" or bool(spec.dark_areas))


def local_contrast_hu(before: np.ndarray, core_hu: float, mask: np.ndarray, organ: np.ndarray,
                      spacing: Sequence[float], organ_name: str, min_voxels: int = 10) -> float | None:
    """The core's contrast to the organ within LOCAL_SHELL_MM of the label as it was before synthesis (None
    where fewer than ``min_voxels`` organ voxels lie there). The gate's parenchyma reference comes from the
    wider neighbourhood: a lesion drawn into a vessel or an unlabelled lesion as dark as itself reads -40 HU
    against it and about 0 here."""
    near = ndimage.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing)) <= LOCAL_SHELL_MM
    shell = near & organ & ~mask
    if int(shell.sum()) < min_voxels:
        return None
    return float(core_hu - parenchyma_hu(before[shell], organ_name))


def lesion_quality(ct_before: np.ndarray, ct_after: np.ndarray, lesion_mask: np.ndarray, organ_mask: np.ndarray,
                   report: Any, spacing: Sequence[float], *, organ_name: str = "organ",
                   limits: GateLimits = GateLimits(), flat_mask: np.ndarray | None = None,
                   label_mask: np.ndarray | None = None) -> dict:
    """Measurements and verdict of one lesion (JSON-ready): ``ok`` and the ``failures`` (reasons) list.

    ``flat_mask`` is the mask to measure flat faces on (default the lesion mask; the benchmark passes the
    1 mm standardized mask when it checks the coarse source grid). ``label_mask`` is the label as it will be
    written where that is not the mask (a lung nodule's reader's contour): the half-contrast extent is judged
    against it.
    """
    lesion_mask = np.asarray(lesion_mask, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    if not lesion_mask.any():
        return {"ok": False, "failures": ["empty label"]}
    spec = lesion_spec(report)
    region = mask_slices(lesion_mask, [int(np.ceil(NEIGHBOURHOOD_MM / s)) for s in spacing])
    mask = lesion_mask[region]
    organ = np.asarray(organ_mask, dtype=bool)[region]
    before = np.asarray(ct_before, dtype=np.float32)[region]
    after = np.asarray(ct_after, dtype=np.float32)[region]
    failures: list[str] = []

    ring = organ & ~ndimage.binary_dilation(mask, iterations=2)
    values = before[ring]
    soft = (values >= PARENCHYMA_WINDOW[0]) & (values <= PARENCHYMA_WINDOW[1])
    if soft.sum() >= 30 or is_lung(organ_name) or is_bone(organ_name):
        ref = parenchyma_hu(values, organ_name) if values.size else float("nan")
    else:  # a thin, fatty organ (pancreas) around a large lesion: the whole organ's parenchyma
        whole = np.asarray(organ_mask, dtype=bool)  # before synthesis: the healthy organ, lesion site included
        ref = parenchyma_hu(np.asarray(ct_before)[whole], organ_name) if whole.any() else float("nan")
    # a part-solid nodule's report value is its solid component's, which the engine paints inside the deeper
    # core (fields.SOLID_CORE_SHARE) with the ground glass around it: measure that component, not the mix
    core = core_region(mask, spacing, SOLID_CORE_SHARE if spec.density == "soft_tissue_ggo" else CORE_SHARE)
    core_hu = float(np.median(after[core]))
    contrast = core_hu - ref
    requested = spec.ct_value
    requested_contrast = None if requested is None else requested - ref
    sign = expected_contrast_sign(spec, organ_name)

    def needed(share: float) -> float:
        """Least |contrast| a hypo/hyperdense lesion shows: ``share`` of the requested contrast, if any."""
        if requested_contrast is not None and np.sign(requested_contrast) == sign:
            return max(limits.min_contrast_hu, share * abs(requested_contrast))
        return limits.min_contrast_hu

    if np.isfinite(contrast) and sign is not None:
        if sign == 0:
            if abs(contrast) > limits.iso_tolerance_hu:
                failures.append(f"isodense requested, core contrast {contrast:+.0f} HU")
        else:
            least = needed(0.5)
            if sign * contrast < least:
                failures.append(f"density {'below' if sign < 0 else 'above'} the organ requested: core contrast "
                                f"{contrast:+.0f} HU (needs {'-' if sign < 0 else '+'}{least:.0f} or more)")
    local = local_contrast_hu(before, core_hu, mask, organ, spacing, organ_name)
    if local is not None and sign in (-1, 1):
        least = needed(limits.min_local_contrast_share)
        if sign * local < least:
            failures.append(f"{NO_EDGE}: core {local:+.0f} HU against the {LOCAL_SHELL_MM:g} mm around it before "
                            f"synthesis (needs {'-' if sign < 0 else '+'}{least:.0f} or more)")
    core_error = None if requested is None else core_hu - requested
    if core_error is not None and abs(core_error) > limits.core_tolerance_hu:
        failures.append(f"core {core_hu:.0f} HU is {core_error:+.0f} HU from the requested {requested:.0f}")

    inside = float((mask & organ).sum() / mask.sum())
    exophytic = spec.cavity is not None and cavity_rule(spec.cavity, organ_name) == PROTRUDING
    outside_soft = None
    if exophytic:
        out = mask & ~organ
        if out.any():
            vals = before[out]
            outside_soft = float(((vals >= SOFT_TISSUE_HU[0]) & (vals <= SOFT_TISSUE_HU[1])).mean())
            if outside_soft < limits.min_outside_soft:
                failures.append(f"exophytic part {100 * (1 - outside_soft):.0f} % in fat/air/bone")
        if inside < limits.min_inside_exophytic:
            failures.append(f"only {100 * inside:.0f} % inside the organ (exophytic)")
    elif inside < limits.min_inside:
        failures.append(f"only {100 * inside:.0f} % inside the organ")

    foreign = None
    if not is_lung(organ_name):
        vals = after[mask]
        bad = vals < FAT_BELOW_HU
        if not (spec.stone or spec.density == "hyper" or is_bone(organ_name)):
            bad |= vals > BONE_ABOVE_HU
        foreign = float(bad.mean())
        if foreign > limits.max_foreign:
            failures.append(f"{100 * foreign:.1f} % fat/gas/bone voxels under the label")

    visible = label_visible_ratio(before, after, mask, organ, spec, spacing)
    # the contrast must not reach past the label as written; a lung nodule's reader's contour is a voxel wider
    # than the drawn lesion by design (at 1/5 of its contrast), so "no wider than the lesion" reads the drawn mask
    written = (visible if label_mask is None else
               label_visible_ratio(before, after, np.asarray(label_mask, dtype=bool)[region], organ, spec, spacing))
    low, high = limits.visible_ratio
    if visible is not None and visible < low:
        failures.append(f"half-contrast / label diameter {_past(visible, low)} outside {low}-{high}")
    elif written is not None and written > high:
        failures.append(f"half-contrast / label diameter {_past(written, high)} outside {low}-{high}")
    flat_source = lesion_mask if flat_mask is None else np.asarray(flat_mask, dtype=bool)
    flat = flat_face_fraction(flat_source[mask_slices(flat_source, (1, 1, 1))]) if flat_source.any() else 0.0
    if flat > limits.max_flat_face:
        shown = _past(flat, limits.max_flat_face)
        failures.append(f"flat face {shown} of the cross-section (> {limits.max_flat_face})")
    return {
        "ok": not failures,
        "failures": failures,
        "organ_hu": round(ref, 1),
        "core_hu": round(core_hu, 1),
        "requested_ct_value": requested,
        "core_error_hu": None if core_error is None else round(core_error, 1),
        "contrast_hu": round(contrast, 1),
        "local_contrast_hu": None if local is None else round(local, 1),
        "requested_contrast_hu": None if requested_contrast is None else round(requested_contrast, 1),
        "fraction_inside_organ": round(inside, 3),
        "exophytic": exophytic,
        "outside_soft_fraction": outside_soft,
        "foreign_fraction": foreign,
        "visible_label_ratio": None if visible is None else round(visible, 3),
        **({} if label_mask is None else
           {"visible_written_label_ratio": None if written is None else round(written, 3)}),
        "flat_face_fraction": round(flat, 3),
        "limits": asdict(limits),
    }


def source_grid_checks(quality: dict, written_hu: float | None, drawn_hu: float | None,
                       visible_ratio: float | None = None, limits: GateLimits = GateLimits()) -> dict:
    """``quality`` with what the source grid will hold added (``pipeline.write_back.source_view``).

    The core contrast where the lesion is written (``written_hu``) against the same measure where it was drawn
    (``drawn_hu``), unless nothing was drawn to keep (below VISIBLE_MIN_HU: isodense, or drawn over tissue
    already as dark or bright); and the half-contrast / label diameter there (``visible_ratio``, None where not
    measured; its lower bound), the grid nnU-Net trains on (bench_realism measures it there).
    """
    out = {**quality, "failures": list(quality["failures"])}
    if written_hu is not None and drawn_hu is not None and abs(drawn_hu) >= VISIBLE_MIN_HU:
        share = float(written_hu) / float(drawn_hu)
        out.update(source_contrast_hu=round(float(written_hu), 1), source_contrast_share=round(share, 3))
        if share < limits.min_source_contrast_share:
            out["failures"].append(f"{FADES}: core contrast {written_hu:+.0f} HU there, {share:.2f} of the "
                                   f"{drawn_hu:+.0f} HU drawn (needs {limits.min_source_contrast_share})")
    if visible_ratio is not None:
        out["source_visible_label_ratio"] = round(float(visible_ratio), 3)
        low = limits.visible_ratio[0]  # a label wider than the lesion seen there teaches over-segmentation; the
        # partial volume a coarse grid spreads beyond a small lesion's label is what real scans show (LIDC's
        # 4-9 mm nodules at 3 mm: upper quartile 1.26-1.44), so the upper bound stays the working grid's
        if visible_ratio < low:
            out["failures"].append(f"in the source grid: half-contrast / label diameter "
                                   f"{_past(visible_ratio, low)} below {low}")
    out["ok"] = not out["failures"]
    return out
