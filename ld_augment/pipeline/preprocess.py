"""`preprocess_case`: healthy CT + lesion wish -> standardized CT, organs, report and lesion boxes.

What LesionDiffusion's preprocess.py did, without its faults: the input is never modified, the standardized
grid has a correct affine, and case.json records how to map results back into the user's own grid.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.errors import ConfigError
from ld_augment.io.atomic import atomic_save_nifti, atomic_write_json
from ld_augment.io.nifti import check_same_grid, load_ct, load_label_map, strip_nifti_suffix
from ld_augment.io.preview import WINDOWS, save_bbox_preview
from ld_augment.io.standardize import SourceGeometry, check_memory_budget, standardize_image
from ld_augment.organs.masks import detect_label_version, organ_mask
from ld_augment.organs.registry import normalize_organ_name
from ld_augment.placement.bboxes import bbox_map, place_lesions
from ld_augment.engines.attributes import expected_contrast_sign, lesion_spec
from ld_augment.engines.attributes import is_lung
from ld_augment.engines.procedural.density import (
    CONTRAST_RANGE, LUNG_HU, MIN_CONTRAST_HU, SOLID_NODULE, aorta_mask, bound_lesion_hu, infer_contrast_phase,
    is_arterial, lesion_hu, parenchyma_hu, phase_of, solid_nodule_core_range,
)
from ld_augment.reports._organs import is_hollow
from ld_augment.reports.consistency import resolve_contradictions
from ld_augment.reports.priors import profile_for
from ld_augment.reports.model import LesionReport, save_reports
from ld_augment.reports.offline import OfflineReportWriter, choose
from ld_augment.reports.writers import ReportWriter
from ld_augment.pipeline.case import CASE_FILES, CASE_FORMAT, PreprocessedCase

log = logging.getLogger(__name__)

ImageArg = str | Path | nib.Nifti1Image


#: At most this many lesions per case: placement and synthesis run once per lesion, so a typo such as 100000
#: must fail at once instead of running for days (the bank's recipe uses the same bound).
MAX_LESIONS_PER_CASE = 50

def _case_id_for(image: ImageArg) -> str:
    if isinstance(image, (str, Path)):
        name = Path(image).name
        return (strip_nifti_suffix(name) or name).removesuffix("_0000")
    return "case"


def _user_gave(attributes: dict[str, str] | None, name: str) -> bool:
    return any(k.lower().replace("_", " ").strip() == name for k in (attributes or {}))


def harmonize_ct_value(report: LesionReport, organ_hu: float, organ: str, rng: np.random.Generator, *,
                       contrast: tuple[float, float] | None = None, resample: bool = False) -> LesionReport:
    """Make the report's CT value agree with its density word relative to this CT's organ.

    Report writers do not see the CT, so a sampled "CT value" can contradict "hypodense" for this patient
    (e.g. 72 HU in a 45 HU liver). The density word is the primary attribute: a value on the wrong side of
    the parenchyma, too close to it, or outside the type's bounds is redrawn from the type's own contrast
    (``contrast``: lesion - parenchyma HU for this phase, reports.priors). ``resample`` redraws it always (the
    offline writer's absolute ranges know nothing of this scan). A CT value the user gave is never changed
    (callers skip this then).
    """
    hu = report.ct_value
    if hu is None and not resample:
        return report
    spec = lesion_spec(report)
    ok = not resample
    if ok:
        sign = expected_contrast_sign(spec, organ)
        low = CONTRAST_RANGE.get(phase_of(report.enhancement_status), CONTRAST_RANGE[None])[0]
        if is_lung(organ) and spec.density in SOLID_NODULE:
            lo, hi = solid_nodule_core_range(spec.size, spec.margin)  # LIDC's solid nodules of this size
            ok = lo <= hu <= hi
        elif is_lung(organ) and spec.density in LUNG_HU:
            lo, hi = LUNG_HU[spec.density]
            ok = lo <= hu <= hi  # solid vs ground glass: the density word sets the HU
        elif sign is None:
            ok = True
        elif sign == -1:
            ok = hu <= organ_hu - min(low, MIN_CONTRAST_HU)
        elif sign == 1:
            ok = hu >= organ_hu + low
        else:
            ok = abs(hu - organ_hu) <= 10.0
        ok = ok and bound_lesion_hu(spec, hu, organ, rng, organ_hu) == hu  # solid never fat/water, fluid water
    if ok:
        return report
    new = lesion_hu(spec, organ_hu, organ, phase_of(report.enhancement_status), rng, contrast=contrast)
    return report.with_values(ct_value=float(round(new)))


def _has_lumen(organ: np.ndarray, spacing: Sequence[float], min_depth_mm: float = 8.0) -> bool:
    """Whether a hollow organ's mask is thick enough somewhere to hold a lumen (a collapsed stomach is not)."""
    return bool(organ.any()) and float(ndimage.distance_transform_edt(organ, sampling=tuple(spacing)).max()) >= min_depth_mm


def _organ_extent(mask: np.ndarray) -> tuple[int, int, int]:
    coords = np.nonzero(mask)
    return tuple(int(c.max() - c.min() + 1) for c in coords)  # type: ignore[return-value]


def _obtain_segmentation(image: ImageArg, ct_img: nib.Nifti1Image, seg: ImageArg | None, organ: str,
                         workdir: Path, segment_options: dict[str, Any]) -> tuple[nib.Nifti1Image, str]:
    """The user's organ segmentation (checked against the CT's grid), or TotalSegmentator's."""
    if seg is not None:
        seg_img = load_label_map(seg, name=str(seg) if not isinstance(seg, nib.Nifti1Image) else "segmentation",
                                 like=ct_img, like_name=str(image))  # another grid fails before a voxel is read
        check_same_grid(ct_img, seg_img, name_a=str(image), name_b=str(seg))
        return seg_img, "user"
    from ld_augment.organs.totalseg import segment_organs  # only when no segmentation is given

    if not isinstance(image, (str, Path)):
        ct_path = workdir / "ct_for_totalseg.nii.gz"
        atomic_save_nifti(ct_img, ct_path)  # a full disk names the file
    else:
        ct_path = Path(image)
    out = segment_organs(ct_path, workdir / "totalseg.nii.gz", organs=[organ], **segment_options)
    return load_label_map(out, name="TotalSegmentator output"), "totalsegmentator"


def preprocess_case(
    image: ImageArg,
    out_dir: str | Path,
    *,
    organ: str,
    lesion_type: str,
    seg: ImageArg | None = None,
    attributes: dict[str, str] | None = None,
    num_lesions: int = 1,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    report_writer: ReportWriter | None = None,
    seed: int = 0,
    shrink: bool = False,
    avoid: ImageArg | None = None,
    case_id: str | None = None,
    preview: bool = True,
    label_version: str | None = None,
    segment_options: dict[str, Any] | None = None,
) -> PreprocessedCase:
    """Standardize one CT, find the organ, write its report and place `num_lesions` boxes into `out_dir`.

    `seg` is the user's organ segmentation (TotalSegmentator v1/v2 ids, or a binary organ mask) in the CT's
    grid; without it TotalSegmentator runs (needs its weights). `avoid` marks voxels (> 0) no box may touch.
    """
    if not 1 <= num_lesions <= MAX_LESIONS_PER_CASE:
        raise ConfigError(f"num_lesions must be 1..{MAX_LESIONS_PER_CASE}, got {num_lesions}")
    if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise ConfigError(f"spacing must be three positive numbers in mm, got {tuple(spacing)}")
    organ = normalize_organ_name(organ)
    out_dir = Path(out_dir)
    case_id = case_id or _case_id_for(image)
    rng = np.random.default_rng(seed)

    ct_img = load_ct(image, name=str(image) if isinstance(image, (str, Path)) else "CT")
    check_memory_budget(ct_img, spacing, name=str(image) if isinstance(image, (str, Path)) else "CT")  # before TotalSegmentator
    # absolute, so `synthesize` finds the source from any working directory
    source = SourceGeometry.from_image(Path(image).resolve() if isinstance(image, (str, Path)) else None, ct_img)
    with tempfile.TemporaryDirectory(prefix="ld_pre_") as tmp:
        seg_img, seg_origin = _obtain_segmentation(image, ct_img, seg, organ, Path(tmp), segment_options or {})
        std_ct = standardize_image(ct_img, spacing, is_label=False)
        std_seg = standardize_image(seg_img, spacing, is_label=True)
    seg_arr = np.asarray(std_seg.dataobj)
    version = label_version or detect_label_version(seg_arr)
    target = organ_mask(seg_arr, organ, version=version)

    occupied = np.zeros(target.shape, dtype=bool)
    if avoid is not None:
        avoid_img = load_label_map(avoid, name=str(avoid) if isinstance(avoid, (str, Path)) else "avoid mask",
                                   like=ct_img, like_name=str(image))
        check_same_grid(ct_img, avoid_img, name_a=str(image), name_b=str(avoid))
        occupied = np.asarray(standardize_image(avoid_img, spacing, is_label=True).dataobj) > 0

    ct_std = np.asarray(std_ct.dataobj, dtype=np.float32)
    aorta = aorta_mask(seg_arr, version)
    phase = infer_contrast_phase(ct_std, aorta)
    user_phase = _user_gave(attributes, "enhancement status")
    if phase is not None and not user_phase:
        attributes = {**(attributes or {}), "enhancement status": phase}  # what this scan is, not a coin flip
    profile = profile_for(lesion_type)
    # an arterial-phase scan changes some types' look (HCC: arterial hyperenhancement); the vocabulary says
    # "enhanced ct" either way, so the phase picks the density word here, unless the user gave one
    arterial = phase == "enhanced ct" and is_arterial(ct_std, aorta) and not user_phase
    if arterial and "arterial" in profile.density_by_phase and not _user_gave(attributes, "density"):
        attributes = {**(attributes or {}), "density": choose(rng, profile.density_by_phase["arterial"])}
    # clinical sizes in mm on the standardized grid, floored at 3 voxels of the source scan
    writer = report_writer or OfflineReportWriter(
        spacing=spacing, min_diameter_mm=3.0 * max(float(z) for z in ct_img.header.get_zooms()[:3]))
    report = writer.write(organ=organ, lesion_type=lesion_type, organ_extent=_organ_extent(target),
                          overrides=attributes, seed=seed, num_lesions=num_lesions)
    if not _user_gave(attributes, "ct value"):
        organ_hu = parenchyma_hu(ct_std[target], organ)  # not the plain median: fat would pull it down
        phase_key = phase_of(report.enhancement_status) or "enhanced ct"
        if arterial and "arterial" in profile.contrast_hu and phase_key == "enhanced ct":
            phase_key = "arterial"
        report = harmonize_ct_value(report, organ_hu, organ, rng,
                                    contrast=profile.contrast_hu.get(phase_key),
                                    resample=isinstance(writer, OfflineReportWriter))
    sizes = list(report.bbox_sizes) if len(report.bbox_sizes) == num_lesions else [report.size] * num_lesions
    boxes = place_lesions(target, sizes, cavity=report.cavity, rng=rng,
                          # a sampled size may shrink to fit this organ; a size the user asked for only with shrink
                          occupied=occupied, shrink=shrink or not _user_gave(attributes, "size"), organ_name=organ,
                          spacing=tuple(float(s) for s in std_ct.header.get_zooms()[:3]))
    report = report.with_bboxes([b.center for b in boxes], [b.size for b in boxes])
    std_spacing = tuple(float(s) for s in std_ct.header.get_zooms()[:3])
    report, resolutions = resolve_contradictions(
        report, spacing=std_spacing, has_lumen=not is_hollow(organ) or _has_lumen(target, std_spacing))
    for note in resolutions:
        log.info("%s: report resolved: %s", case_id, note)

    out_dir.mkdir(parents=True, exist_ok=True)
    # an earlier run's case.json must not vouch for files being rewritten now (it is written last, below)
    (out_dir / CASE_FILES["case"]).unlink(missing_ok=True)
    (out_dir / "avoid.nii.gz").unlink(missing_ok=True)
    seg_path = Path(seg).resolve() if isinstance(seg, (str, Path)) else None
    if seg_origin == "totalsegmentator":  # keep it in the source grid: synthesize labels the organ from it
        seg_path = atomic_save_nifti(seg_img, out_dir / "organs_source.nii.gz").resolve()
    atomic_save_nifti(std_ct, out_dir / CASE_FILES["ct"])
    atomic_save_nifti(std_seg, out_dir / CASE_FILES["organs"])
    atomic_save_nifti(nib.Nifti1Image(bbox_map(target.shape, boxes).astype(np.uint8), std_ct.affine),
                      out_dir / CASE_FILES["bboxes"])
    save_reports([report], out_dir / CASE_FILES["report"])
    if avoid is not None:
        atomic_save_nifti(nib.Nifti1Image(occupied.astype(np.uint8), std_ct.affine), out_dir / "avoid.nii.gz")
    if preview:
        ct_arr = np.asarray(std_ct.dataobj, dtype=np.float32)
        save_bbox_preview(ct_arr, target, [(b.start(target.shape), b.stop(target.shape)) for b in boxes],
                          out_dir / CASE_FILES["preview"],
                          title=f"{case_id}: {organ}, {lesion_type}",
                          window=WINDOWS["lung" if is_lung(organ) else "soft tissue"])
    meta = {
        "format": CASE_FORMAT,
        "case_id": case_id,
        "organ": organ,
        "lesion_type": lesion_type,
        "seed": int(seed),
        "source": source.to_dict(),
        "segmentation": {
            "path": None if seg_path is None else str(seg_path),
            "origin": seg_origin,
            "label_version": version,
        },
        "spacing": [float(s) for s in spacing],
        "organ_voxels_std": int(target.sum()),
        "has_avoid_mask": avoid is not None,
        # the phase inferred from the aorta ("arterial" where it set the type's arterial profile)
        "contrast_phase": "arterial" if arterial else phase,
        "report_resolutions": resolutions,
        "bboxes": [b.to_dict() for b in boxes],
    }
    # case.json last: its presence marks a complete case folder.
    atomic_write_json(out_dir / CASE_FILES["case"], meta)
    log.info("%s: %d lesion box(es) in %s", case_id, len(boxes), organ)
    return PreprocessedCase(case_dir=out_dir, meta=meta)
