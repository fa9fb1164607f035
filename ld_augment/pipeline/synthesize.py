"""`synthesize_case`: a preprocessed case -> a synthetic CT and its label map in the source CT's own grid."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ld_augment.engines.adherence import measure_adherence
from ld_augment.engines.attributes import is_lung, lesion_spec
from ld_augment.engines.base import LesionContext, MaskEngine, TextureEngine
from ld_augment.engines.procedural.fields import mask_slices
from ld_augment.engines.quality import FADES, label_visible_ratio, lesion_quality, source_grid_checks
from ld_augment.engines.registry import create_mask_engine, create_texture_engine
from ld_augment.errors import ConfigError, InputError
from ld_augment.io.atomic import atomic_save_nifti, atomic_write_json
from ld_augment.io.geometry import VoxelBox, resample_region_to_source
from ld_augment.io.nifti import load_ct, load_label_map, sha256_file
from ld_augment.io.preview import WINDOWS, save_before_after_preview
from ld_augment.organs.masks import organ_mask
from ld_augment.placement.bboxes import BBox
from ld_augment.reports.model import load_reports, reports_to_type_json, save_reports
from ld_augment.pipeline.case import PreprocessedCase
from ld_augment.pipeline.write_back import (SCAN_PSF_FWHM_MM, SOURCE_SHELL_MM, core_contrast, lesion_in_source,
                                           match_source_noise, source_image_like, source_spacing, source_view,
                                           transition_band, write_back, written_outline)

log = logging.getLogger(__name__)

DEFAULT_LABEL_SCHEME = {"background": 0, "organ": 1, "lesion": 2}
#: HU range a CT voxel can hold (air to dense bone/metal as stored by scanners).
CT_HU_RANGE = (-1024.0, 3071.0)
#: Fewest source-grid voxels a lesion's label may have (a ball 3 voxels across holds 14): below this it is redrawn.
MIN_SOURCE_VOXELS = 14
#: The same for a lung lesion: against aerated lung even a one-voxel nodule is visible and real (LIDC at 3 mm:
#: 15 % of the 992 nodules are 1-3 voxels, 64 % under 9 mm); a floor of 4 voxels made every small request a
#: 6 mm nodule and left that whole tail out.
MIN_SOURCE_VOXELS_LUNG = 1
#: Share of a source voxel's extent that makes it part of a lung lesion's label (write_back.partial_label_share):
#: the partial-volume rim a reader labels on a thick slice.
LUNG_PARTIAL_LABEL_SHARE = 0.3
#: Share of its contrast where a reader traces a lung nodule's outline (write_back.contour_share): the foot of
#: the edge's ramp. LIDC's thin-slice readers leave a median 32 % of their label voxels below half contrast.
#: Drawn per slice from LUNG_CONTOUR_SHARE +- LUNG_CONTOUR_SPREAD (write_back.contour_spread): a reader traces
#: every slice anew. One share (0.22) for every slice grew a ring as wide on each slice and, with bodies a voxel
#: narrower (LUNG_CONTOUR_VOX), rounded small nodules off at 1 mm (bench_thin_slice_shape seed 0, < 7 mm:
#: sphericity 0.905, convexity 0.954 against LIDC's IQR up to 0.898 / 0.934); 0.18 +- 0.18 gives 0.856 / 0.925
#: (LIDC medians 0.876 / 0.909) and 7-10 mm 0.857 / 0.897 (LIDC 0.836 / 0.850, one share drawn whole: 0.886 /
#: 0.928), with the edge's shares 1 mm outside and inside the label 0.112 / 0.634 (LIDC 0.101 / 0.622, one
#: share: 0.119 / 0.632; 0.22 +- 0.22 left 0.148 outside, 0.3 +- 0.3 0.162: slices traced high on the ramp).
LUNG_CONTOUR_SHARE = 0.18
LUNG_CONTOUR_SPREAD = 0.18
#: How much wider (standardized voxels, across the lesion) a lung nodule's written label is than its mask in
#: the slice plane (``LesionContext.contour_vox``): the reader's contour (LUNG_CONTOUR_SHARE) grows it up to a
#: voxel per side. LIDC's thin-slice solid nodules at 1 mm, boxes 6-8 mm (60): longest axial diameter / box
#: 0.99, equivalent diameter / box geometric mean 0.91; procedural masks with their contour 1.12 / 1.00 filling
#: the box, 1.01 / 0.93 drawn a voxel narrower in-plane (3 mm: LIDC 1.06 / 0.90, 1.20 / 1.00, 1.06 / 0.93); boxes
#: 5-10 mm (80) a voxel narrower 1.02 / 0.94, two 0.91 / 0.87 (LIDC 0.97 / 0.92). Labels a segmenter learns from
#: were 1-2 mm wider in-plane than a reader's. Boxes under ``mask.CONTOUR_MIN_SIDE`` and from
#: ``mask.CONTOUR_MAX_SIDE`` on are drawn whole.
LUNG_CONTOUR_VOX = 1.0
#: A lung nodule's edge blur (FWHM, mm) where the source grid adds less (thin slices), on both sides of its
#: surface. LIDC's solid nodules on <= 1.3 mm slices, at 1 mm: 10-90 % edge rise 2.0 mm, 0.62 of the contrast
#: in the label's outer 1 mm, 0.10 in the 1 mm outside it, a median 32 % of label voxels below half contrast.
#: The scanner's 1.25 mm spilled outside a label on the lesion's surface gave 1.2 mm, 0.98, 0.10 and 0 %: a step
#: at the label (benchmarks/bench_edge_profile.py). A 3 mm grid's own partial volume is wider and stands for it.
LUNG_EDGE_FWHM_MM = 1.85
#: Fewest source-grid label voxels whose half-contrast extent the gate compares with the label (a 3 x 3 x 3
#: block; below it one voxel more or less moves the diameter ratio by over 1 %, and LIDC's own 4-6 mm nodules
#: range 1.0-1.6 at 3 mm).
SOURCE_SHAPE_VOXELS = 27
#: Redraws of a lesion whose source-grid label would be too small, each with a 1.3x larger box.
REDRAWS = 3


@dataclass
class SynthesisResult:
    """Where the outputs are and what was measured for each lesion."""

    out_dir: Path
    ct_path: Path
    label_path: Path
    report_path: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def lesions(self) -> list[dict[str, Any]]:
        return self.record.get("lesions", [])


def check_label_scheme(scheme: dict[str, int] | None) -> dict[str, int]:
    """The target label scheme: names -> ids; needs a lesion label, ids distinct and in 0..255.

    An optional "ignore" entry (nnU-Net's ignore label, which must be the highest id) receives the transition
    band of ill-defined lesions: voxels that changed, but less than half-way to the lesion's density.
    """
    scheme = dict(DEFAULT_LABEL_SCHEME if scheme is None else scheme)
    if "lesion" not in scheme:
        raise ConfigError(f"label scheme {scheme} needs a 'lesion' entry (e.g. {DEFAULT_LABEL_SCHEME})")
    unknown = set(scheme) - {"background", "organ", "lesion", "ignore"}
    if unknown:
        raise ConfigError(f"label scheme has unknown names {sorted(unknown)}; allowed: background, organ, lesion, "
                          "ignore")
    if "ignore" in scheme and scheme["ignore"] != max(scheme.values()):
        raise ConfigError(f"the ignore label must be the highest id (nnU-Net), got {scheme}")
    ids = list(scheme.values())
    if len(set(ids)) != len(ids) or any(not isinstance(i, int) or not 0 <= i <= 255 for i in ids):
        raise ConfigError(f"label scheme ids must be distinct integers in 0..255, got {scheme}")
    if scheme["lesion"] == scheme.get("background", 0):
        raise ConfigError("the lesion label must differ from the background label")
    return scheme


def make_engines(mask_engine: str | MaskEngine = "procedural", texture_engine: str | TextureEngine = "procedural",
                 *, options: dict[str, dict[str, Any]] | None = None,
                 device: str = "cpu") -> tuple[MaskEngine, TextureEngine]:
    """Engines by name (or given instances) with their options; `device` goes to every non-procedural engine.

    Build them once for a batch and pass the instances to `synthesize_case`: weights load and hash once.
    """
    opts = options or {}
    built = []
    for engine, role, create in ((mask_engine, "mask", create_mask_engine),
                                 (texture_engine, "texture", create_texture_engine)):
        if not isinstance(engine, str):
            built.append(engine)
            continue
        kwargs = dict(opts.get(role, {}))
        if engine != "procedural":
            kwargs.setdefault("device", device)
        built.append(create(engine, **kwargs))
    return built[0], built[1]


def _source_image(case: PreprocessedCase, source_image: str | Path | None) -> tuple[nib.Nifti1Image, Path]:
    recorded = case.meta["source"]
    path = Path(source_image) if source_image is not None else Path(recorded.get("path") or "")
    if not path.is_file():
        raise InputError(f"source CT {path} of case {case.case_id} not found; pass source_image= (--source) "
                         "if it moved")
    digest = sha256_file(path)
    if recorded.get("sha256") and digest != recorded["sha256"]:
        raise InputError(f"source CT {path} changed since preprocessing (sha256 {digest[:12]}... != recorded "
                         f"{recorded['sha256'][:12]}...); preprocess it again")
    return load_ct(path, name=str(path)), path


def _source_organ_mask(case: PreprocessedCase, source_img: nib.Nifti1Image, organ_std: np.ndarray,
                       std_affine: np.ndarray) -> np.ndarray:
    """The target organ in the source grid: from the user's own segmentation, else resampled (nearest)."""
    seg_info = case.meta["segmentation"]
    seg_path = seg_info.get("path")
    if seg_path and Path(seg_path).is_file():
        seg = np.asarray(load_label_map(seg_path, name=seg_path, like=source_img,
                                        like_name=str(case.meta["source"].get("path"))).dataobj)
        return organ_mask(seg, case.meta["organ"], version=seg_info["label_version"])
    full = VoxelBox((0, 0, 0), tuple(int(n) for n in source_img.shape[:3]))  # type: ignore[arg-type]
    return resample_region_to_source(organ_std, std_affine, source_img.shape, source_img.affine, full, order=0,
                                     mode="constant")


@dataclass
class _Drawn:
    """One planned lesion after the mask phase: its final mask (empty when the engine dropped it)."""

    index: int  # 1-based box number
    mask: np.ndarray
    drawn: BBox  # the box finally drawn in (larger after redraws)
    report: Any  # the report with this lesion's size
    attempts: int
    source_voxels: int
    accepted: bool
    rng: np.random.Generator  # the lesion's stream, continued by its texture
    seconds: float


def _larger(box: BBox, base: BBox) -> BBox:
    return BBox(base.center, tuple(max(int(np.ceil(s * 1.3)), s + 1) for s in box.size))  # type: ignore[arg-type]


def _draw_masks(masker: MaskEngine, ctx: LesionContext, boxes: list[BBox], order: list[int], report: Any,
                rng_for: Callable[[int], np.random.Generator], source_voxels: Callable[[np.ndarray], int],
                min_source_voxels: int, drops_failed: bool) -> list[_Drawn]:
    """Every planned lesion's mask, first draws in one ``generate_masks`` call (shared network batches).

    The result is what drawing lesion after lesion gives: a lesion too small in the source grid is redrawn in a
    1.3x larger box (up to REDRAWS times) with its own stream continued, accepted lesions join ``occupied``;
    when a lesion was redrawn or left out, the later lesions' first draws (made with its first mask counted as
    occupied) are discarded and drawn again with fresh streams -- rare, and exact.
    """
    occupied = np.array(ctx.occupied, dtype=bool, copy=True)
    done: list[_Drawn] = []
    pending = list(order)
    while pending:
        rngs = [rng_for(i) for i in pending]
        reports = [report.with_values(size=boxes[i].size) for i in pending]
        t0 = time.perf_counter()
        firsts = masker.generate_masks(replace(ctx, occupied=occupied.copy()), [boxes[i] for i in pending],
                                       reports, rngs)
        share = (time.perf_counter() - t0) / len(pending)
        rest: list[int] = []
        for n, (i, rng, first) in enumerate(zip(pending, rngs, firsts)):
            t1 = time.perf_counter()
            mask, drawn, lesion_report = np.asarray(first, dtype=bool), boxes[i], reports[n]
            voxels, attempt = source_voxels(mask), 0
            while voxels < min_source_voxels and not (drops_failed and not mask.any()) and attempt < REDRAWS:
                attempt += 1
                drawn = _larger(drawn, boxes[i])
                lesion_report = report.with_values(size=drawn.size)
                mask = np.asarray(masker.generate_mask(replace(ctx, occupied=occupied.copy()), drawn, lesion_report,
                                                       rng), dtype=bool)
                voxels = source_voxels(mask)
            accepted = voxels >= min_source_voxels
            if accepted:
                occupied |= mask
            done.append(_Drawn(i + 1, mask, drawn, lesion_report, attempt + 1, voxels, accepted, rng,
                               share + time.perf_counter() - t1))
            if attempt or (not accepted and first.any()):  # the later first draws saw another occupancy
                rest = pending[n + 1:]
                break
        pending = rest
    return done


#: Redraws (new mask and texture from the lesion's own stream) of a lesion that fails the quality gate.
GATE_REDRAWS = 3


def _apply_gate(ct: np.ndarray, kept: list[_Drawn], lesions: list[dict[str, Any]], skipped: list[dict[str, Any]],
                boxes: list[BBox], enforce: bool, gate: dict[str, Any], masker: MaskEngine, texturer: TextureEngine,
                ctx: LesionContext, lesion_ids: np.ndarray, undo: dict, bands: dict, measure: Callable,
                source_voxels: Callable[[np.ndarray], int], min_source_voxels: int,
                hu_range: tuple[float, float], case_id: str, on_source_voxel: Callable[[BBox], BBox]) -> np.ndarray:
    """The quality gate after rendering: a failing lesion is redrawn (GATE_REDRAWS times) or dropped.

    A lesion that faded in the source grid is redrawn centred on a source voxel (``on_source_voxel``).

    Without ``enforce`` (engines other than the procedural one, unless asked) failures are only recorded,
    and counted as ``failed_written``; a lesion is never written marked ok when it failed.
    """
    by_index = {d.index: d for d in kept}
    for record in list(lesions):
        gate["checked"] += 1
        quality = record["quality"]
        if quality["ok"]:
            gate["passed_first"] += 1
            continue
        if not enforce:
            gate["failed_written"] += 1
            continue
        d = by_index[record["index"]]
        history = [quality["failures"]]
        changed, old = undo.pop(d.index)
        ct.flat[changed] = old  # take the failed lesion out again (ravel() is a copy of an F-ordered CT)
        lesion_ids[lesion_ids == d.index] = 0
        bands.pop(d.index, None)
        accepted = None
        box = d.drawn
        for _ in range(GATE_REDRAWS):
            if any(f.startswith(FADES) for f in history[-1]):
                box = on_source_voxel(box)
            others = np.asarray(ctx.occupied, dtype=bool) | (lesion_ids > 0)
            try:
                mask = np.asarray(masker.generate_mask(replace(ctx, occupied=others), box, d.report, d.rng),
                                  dtype=bool)
            except ConfigError as exc:
                history.append([f"mask: {exc}"])
                break
            if source_voxels(mask) < min_source_voxels:
                history.append(["vanishes in the source grid"])
                continue
            before = ct.copy()
            after = np.clip(np.asarray(texturer.render(replace(ctx, ct=before, occupied=others), mask, d.report,
                                                       d.rng), dtype=np.float32), *hu_range)
            measured = measure(d, mask, before, after)
            if measured["quality"]["ok"]:
                accepted = (mask, after, measured, box)
                break
            history.append(measured["quality"]["failures"])
            bands.pop(d.index, None)
        if accepted is None:
            lesions.remove(record)
            gate["dropped"] += 1
            skipped.append({"index": d.index, "bbox": boxes[d.index - 1].to_dict(), "reason": "quality gate",
                            "failures": history})
            log.warning("%s lesion %d dropped by the quality gate: %s", case_id, d.index, history)
            continue
        mask, ct, measured, box = accepted
        lesion_ids[mask] = d.index
        gate["redrawn"] += 1
        record.update(measured, voxels_std=int(mask.sum()), voxels_source=source_voxels(mask),
                      drawn_bbox=box.to_dict(), gate_attempts=len(history) + 1, gate_history=history)
    return ct


def synthesize_case(
    case_dir: str | Path,
    out_dir: str | Path,
    *,
    mask_engine: str | MaskEngine = "procedural",
    texture_engine: str | TextureEngine = "procedural",
    seed: int = 0,
    label_scheme: dict[str, int] | None = None,
    keep_standardized: bool = False,
    device: str = "cpu",
    preview: bool = True,
    engine_options: dict[str, dict[str, Any]] | None = None,
    source_image: str | Path | None = None,
    min_source_voxels: int | None = None,
    ignore_band: str = "ill",
    quality_gate: str = "auto",
) -> SynthesisResult:
    """Draw and texture every lesion box of `case_dir`, then write the results in the source CT's grid.

    `engine_options` = {"mask": {...}, "texture": {...}} are passed to engines given by name (e.g.
    checkpoint paths for the diffusion engine); `device` is added for engines other than "procedural".
    A lesion whose label in the source grid would have fewer than `min_source_voxels` voxels (default
    MIN_SOURCE_VOXELS, in lung MIN_SOURCE_VOXELS_LUNG) is redrawn
    (larger box, up to REDRAWS times) and otherwise left out, so no written lesion has a vanished label;
    a case where every lesion would vanish is a ConfigError. With an "ignore" label in the scheme, the
    transition band (`write_back.transition_band`) of lesions with ill-defined margins (`ignore_band="ill"`),
    of every lesion ("all") or of none ("none") is written with it.
    `quality_gate` ("auto" | "enforce" | "record" | "off"): every lesion is checked by
    `engines.quality.lesion_quality`; "enforce" redraws a failing lesion (GATE_REDRAWS times) and drops it
    if it still fails (recorded in skipped_lesions with the reasons); "record" only records the verdict and
    counts failures; "auto" enforces with the procedural engines and records with any other.
    """
    scheme = check_label_scheme(label_scheme)
    if quality_gate not in ("auto", "enforce", "record", "off"):
        raise ConfigError(f"quality_gate must be 'auto', 'enforce', 'record' or 'off', got {quality_gate!r}")
    if ignore_band not in ("ill", "all", "none"):
        raise ConfigError(f"ignore_band must be 'ill', 'all' or 'none', got {ignore_band!r}")
    case = PreprocessedCase.open(case_dir)
    out_dir = Path(out_dir)
    masker, texturer = make_engines(mask_engine, texture_engine, options=engine_options, device=device)

    std_img = nib.load(str(case.path("ct")))
    ct_before = np.asarray(std_img.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(case.path("organs"))).dataobj)
    spacing = tuple(float(z) for z in std_img.header.get_zooms()[:3])
    organ = case.meta["organ"]
    target = organ_mask(seg, organ, version=case.meta["segmentation"]["label_version"])
    if min_source_voxels is None:
        min_source_voxels = MIN_SOURCE_VOXELS_LUNG if is_lung(organ) else MIN_SOURCE_VOXELS
    reports = load_reports(case.path("report"))
    report = reports[0]
    boxes = [BBox.from_dict(b) for b in case.meta["bboxes"]]
    occupied = np.zeros(target.shape, dtype=bool)
    avoid_path = case.case_dir / "avoid.nii.gz"
    if avoid_path.is_file():
        occupied |= np.asarray(nib.load(str(avoid_path)).dataobj) > 0
    source_img, source_path = _source_image(case, source_image)
    # The valid range always contains the CT's own values, so clipping never alters an untouched voxel.
    hu_range = (min(CT_HU_RANGE[0], float(ct_before.min())), max(CT_HU_RANGE[1], float(ct_before.max())))
    lesion_ids = np.zeros(target.shape, dtype=np.uint8)
    band_std = np.zeros(target.shape, dtype=bool)
    lesions: list[dict[str, Any]] = []
    # an engine may choose which boxes it draws and in which order (released LMNet: > 50 voxels, largest first,
    # at most 3) and may drop a lesion that fails its selection (an empty mask), as the original inference does
    plan = getattr(masker, "plan_lesions", None)
    order = list(plan(boxes, target.shape)) if plan is not None else list(range(len(boxes)))
    skipped = [{"index": i + 1, "bbox": b.to_dict(), "reason": "not planned by the mask engine"}
               for i, b in enumerate(boxes) if i not in set(order)]
    # independent streams per organ/lesion type and per lesion: seed 3 in the liver is not seed 3 in the kidney
    streams = np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(f"{organ}|{case.meta.get('lesion_type', '')}".encode())]
    ).spawn(len(boxes) + 1)
    # the standardized grid is RAS: its third axis runs along the slices, which the reader's contour never grows
    ctx = LesionContext(ct=ct_before, organ_seg=seg, organ_mask=target, organ_name=organ, spacing=spacing,
                        occupied=occupied,
                        contour_vox=(LUNG_CONTOUR_VOX, LUNG_CONTOUR_VOX, 0.0) if is_lung(organ) else (0.0, 0.0, 0.0))

    organ_src = _source_organ_mask(case, source_img, target, std_img.affine)
    # how write_back renders this case's lesions in the source grid (the gate's source view renders them alike)
    write_options = {"partial_label_share": LUNG_PARTIAL_LABEL_SHARE if is_lung(organ) else None,
                     "contour_share": LUNG_CONTOUR_SHARE if is_lung(organ) else None,
                     "contour_spread": LUNG_CONTOUR_SPREAD if is_lung(organ) else 0.0,
                     "average_under_label": is_lung(organ),
                     # a network's output is an image already; the procedural engine's edges are ideal
                     "psf_floor_mm": (LUNG_EDGE_FWHM_MM if is_lung(organ) else SCAN_PSF_FWHM_MM)
                     if texturer.ideal_edges else 0.0}
    # a coarser source grid averages a small lesion's contrast away: the gate measures what is written there
    coarser = max(source_spacing(source_img)) > 1.25 * min(spacing)

    def on_source_voxel(box: BBox) -> BBox:
        """``box`` moved (by at most half a source voxel) so that its centre lies on a source voxel's centre:
        a small lesion straddling coarse voxels splits its contrast among them and fades."""
        size = np.asarray(box.size, dtype=np.float64)
        centre = np.asarray(box.center, dtype=np.float64) - size // 2 + (size - 1) / 2  # geometric, std voxels
        world = std_img.affine @ np.r_[centre, 1.0]
        src = source_img.affine @ np.r_[np.round(np.linalg.solve(source_img.affine, world)[:3]), 1.0]
        moved = np.linalg.solve(std_img.affine, src)[:3]
        new_center = tuple(int(v) for v in np.round(moved + size // 2 - (size - 1) / 2))
        return BBox(new_center, box.size)

    def source_voxels(mask: np.ndarray) -> int:
        return int(lesion_in_source(source_img, std_img.affine, mask).sum()) if mask.any() else 0

    # as the original: every mask first (on the healthy CT), then every texture; each phase in shared batches
    drawn_all = _draw_masks(masker, ctx, boxes, order, report, lambda i: np.random.default_rng(streams[i]),
                            source_voxels, min_source_voxels, getattr(masker, "skips_failed_lesions", False))
    kept: list[_Drawn] = []
    for d in drawn_all:
        if d.accepted:
            kept.append(d)
        elif not d.mask.any():
            skipped.append({"index": d.index, "bbox": boxes[d.index - 1].to_dict(),
                            "reason": "no acceptable mask (dropped)"})
            log.info("%s lesion %d: no acceptable mask, dropped as the original does", case.case_id, d.index)
        else:
            log.warning("%s lesion %d left out: its label would have %d voxel(s) in the source grid (< %d)",
                        case.case_id, d.index, d.source_voxels, min_source_voxels)
            skipped.append({"index": d.index, "bbox": boxes[d.index - 1].to_dict(),
                            "reason": "vanishes in the source grid", "source_voxels": d.source_voxels,
                            "attempts": d.attempts})
    previous = ct_before.copy()  # the CT before the lesion being reported on
    t_render = time.perf_counter()
    enforce = quality_gate == "enforce" or (quality_gate == "auto" and masker.name == "procedural"
                                            and texturer.name == "procedural")
    undo: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # lesion index -> (changed flat indices, old values)
    bands: dict[int, np.ndarray] = {}

    def wants_band(d: _Drawn) -> bool:
        return "ignore" in scheme and (ignore_band == "all" or (ignore_band == "ill"
                                                                and lesion_spec(d.report).margin == "ill"))

    def source_checks(d: _Drawn, mask: np.ndarray, before: np.ndarray, after: np.ndarray,
                      quality: dict[str, Any]) -> dict[str, Any]:
        """The gate's verdict with what the source grid will hold: the contrast a lung lesion keeps there, and the
        half-contrast extent vs the label where the label has SOURCE_SHAPE_VOXELS (fewer: a count of voxels)."""
        view = source_view(source_img, std_img.affine, after - before, mask, organ_src, **write_options)
        if view is None:
            return quality
        drawn = written = None
        if is_lung(organ):  # against aerated lung a core's contrast is measured reliably in a thin shell; in a
            # thin, fatty or hollow abdominal organ (pancreas, stomach) the shell's reference moved by more than
            # a low-contrast lesion's 15-40 HU between the grids, so there the half-contrast extent alone is judged
            near = mask_slices(mask, [int(np.ceil(2.0 * SOURCE_SHELL_MM / s)) for s in spacing])
            drawn = core_contrast(before[near], after[near], mask[near], target[near], spacing, organ)
            written = core_contrast(view.before, view.after, view.lesion, view.organ, view.spacing, organ)
        visible = None
        if view.lesion.sum() >= SOURCE_SHAPE_VOXELS:
            # with the source grid's noise matched as write_back will (its own draw: a low-contrast lesion near a
            # bound is judged with noise of the written file's strength, not the smoother interpolated one)
            noisy, _ = match_source_noise(view.after, view.lesion, view.organ & ~view.lesion, view.spacing,
                                          np.random.default_rng([int(seed) & 0xFFFFFFFF, d.index]))
            visible = label_visible_ratio(view.before, noisy, view.lesion, view.organ, lesion_spec(d.report),
                                          view.spacing)
        return source_grid_checks(quality, written, drawn, visible)

    def measure(d: _Drawn, mask: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
        """Record one rendered lesion: adherence, quality verdict, its band and how to undo it."""
        changed = np.flatnonzero(after != before)
        undo[d.index] = (changed, before.ravel()[changed].copy())
        if wants_band(d):
            bands[d.index] = transition_band(after - before, mask, spacing)
        # the half-contrast extent is judged against the label as written (a lung nodule's grown by the reader's
        # contour): against the bare mask, 4 mm nodules with voxel-scale notches read 1.16-1.27 x their label
        label = (written_outline(mask, std_img.affine, **write_options)
                 if write_options["contour_share"] is not None else None)
        quality = (lesion_quality(before, after, mask, target, d.report, spacing, organ_name=organ, label_mask=label)
                   if quality_gate != "off" else None)
        if quality is not None and coarser:
            quality = source_checks(d, mask, before, after, quality)
        return {"adherence": measure_adherence(before, after, mask, target, d.report, spacing, organ_name=organ),
                "quality": quality}

    def on_rendered(n: int, ct_now: np.ndarray) -> None:
        d = kept[n]
        measured = measure(d, d.mask, previous, ct_now)
        np.copyto(previous, ct_now)
        lesion_ids[d.mask] = d.index
        lesions.append({"index": d.index, "bbox": boxes[d.index - 1].to_dict(), "drawn_bbox": d.drawn.to_dict(),
                        "attempts": d.attempts, "voxels_std": int(d.mask.sum()), "voxels_source": d.source_voxels,
                        "seconds": {"mask": round(d.seconds, 4)}, **measured})
        log.info("%s lesion %d: %d voxels", case.case_id, d.index, int(d.mask.sum()))

    ct = ct_before
    gate = {"mode": "enforce" if enforce else ("off" if quality_gate == "off" else "record"),
            "checked": 0, "passed_first": 0, "redrawn": 0, "dropped": 0, "failed_written": 0}
    if kept:
        ct = texturer.render_many(ctx, [d.mask for d in kept], [d.report for d in kept], [d.rng for d in kept],
                                  on_rendered=on_rendered)
        ct = np.array(np.clip(np.asarray(ct, dtype=np.float32), *hu_range), copy=True)
        share = (time.perf_counter() - t_render) / len(kept)  # lesions share the texture calls
        for record in lesions:
            record["seconds"]["texture"] = round(share, 4)
        if quality_gate != "off":
            ct = _apply_gate(ct, kept, lesions, skipped, boxes, enforce, gate, masker, texturer, ctx, lesion_ids,
                             undo, bands, measure, source_voxels, min_source_voxels, hu_range, case.case_id,
                             on_source_voxel)
    for band in bands.values():
        band_std |= band
    if not (lesion_ids > 0).any():
        reasons = sorted({r["reason"] for r in skipped})
        advice = []
        if "vanishes in the source grid" in reasons:
            advice.append(f"a label needs at least {min_source_voxels} voxels in the source grid of {source_path}: "
                          "ask for larger lesions or a finer source scan")
        gate_failures = sorted({f for r in skipped for tries in r.get("failures", []) for f in tries})
        if gate_failures:  # what the gate measured on the last tries, not a size problem
            advice.append("the quality gate measured: " + "; ".join(gate_failures[:4]))
        raise ConfigError(f"case {case.case_id}: no lesion in {organ!r} could be written ({'; '.join(reasons)})"
                          + "".join(f"; {a}" for a in advice))

    written = write_back(source_img, std_img.affine, ct - ct_before, lesion_ids > 0, hu_range=hu_range,
                         organ_src=organ_src, rng=np.random.default_rng(streams[-1]), **write_options)
    label = np.zeros(source_img.shape[:3], dtype=np.uint8)
    if "organ" in scheme:
        label[organ_src] = scheme["organ"]
    label[written.lesion] = scheme["lesion"]
    if band_std.any():
        band_src = lesion_in_source(source_img, std_img.affine, band_std)
        label[band_src & ~written.lesion & organ_src] = scheme["ignore"]  # the outer half of the margin
        band_in = band_src & written.lesion
        if (written.lesion & ~band_in).sum() >= min_source_voxels:  # the band never swallows the lesion label
            label[band_in] = scheme["ignore"]
    label_img = nib.Nifti1Image(label, source_img.affine)
    label_img.set_qform(source_img.affine, code=1)
    label_img.set_sform(source_img.affine, code=1)

    ct_path = atomic_save_nifti(source_image_like(source_img, written.ct_raw), out_dir / "ct.nii.gz")
    label_path = atomic_save_nifti(label_img, out_dir / "label.nii.gz")
    report_path = save_reports(reports, out_dir / "report.json")
    if keep_standardized:
        atomic_save_nifti(nib.Nifti1Image(ct, std_img.affine), out_dir / "standardized" / "ct.nii.gz")
        atomic_save_nifti(nib.Nifti1Image(lesion_ids, std_img.affine), out_dir / "standardized" / "lesions.nii.gz")
    if preview:
        save_before_after_preview(ct_before, ct, lesion_ids > 0, [b.center for b in boxes],
                                  out_dir / "preview.png", window=WINDOWS["lung" if is_lung(organ) else "soft tissue"])
    record = {
        "case_id": case.case_id,
        "case_dir": str(case.case_dir.resolve()),
        "source": {"path": str(source_path.resolve()), "sha256": case.meta["source"].get("sha256")},
        "seed": int(seed),
        "label_scheme": scheme,
        "engine": {"mask": masker.provenance(), "texture": texturer.provenance()},
        "report": reports_to_type_json(reports),
        "lesions": lesions,
        "skipped_lesions": sorted(skipped, key=lambda r: r["index"]),
        "source_region": written.region.to_dict() if written.region else None,
        "changed_voxels_source": int(written.changed.sum()),
        "lesion_voxels_source": int(written.lesion.sum()),
        "ignore_voxels_source": int((label == scheme["ignore"]).sum()) if "ignore" in scheme else 0,
        "source_noise": written.noise,
        "write_back": write_options,
        "quality_gate": gate,
        "report_resolutions": case.meta.get("report_resolutions", []),
    }
    atomic_write_json(out_dir / "synthesis.json", record)
    return SynthesisResult(out_dir, Path(ct_path), Path(label_path), Path(report_path), record)
