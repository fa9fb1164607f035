"""`synthesize_case`: a preprocessed case -> a synthetic CT and its label map in the source CT's own grid."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ld_augment.engines.adherence import measure_adherence
from ld_augment.engines.base import LesionContext, MaskEngine, TextureEngine
from ld_augment.engines.registry import create_mask_engine, create_texture_engine
from ld_augment.errors import ConfigError, InputError
from ld_augment.io.atomic import atomic_save_nifti, atomic_write_json
from ld_augment.io.geometry import VoxelBox, resample_region_to_source
from ld_augment.io.nifti import load_ct, load_label_map, sha256_file
from ld_augment.io.preview import save_before_after_preview
from ld_augment.organs.masks import organ_mask
from ld_augment.placement.bboxes import BBox
from ld_augment.reports.model import load_reports, reports_to_type_json, save_reports
from ld_augment.pipeline.case import PreprocessedCase
from ld_augment.pipeline.write_back import source_image_like, write_back

log = logging.getLogger(__name__)

DEFAULT_LABEL_SCHEME = {"background": 0, "organ": 1, "lesion": 2}
#: HU range a CT voxel can hold (air to dense bone/metal as stored by scanners).
CT_HU_RANGE = (-1024.0, 3071.0)


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
    """The target label scheme: names -> ids; needs a lesion label, ids distinct and in 0..255."""
    scheme = dict(DEFAULT_LABEL_SCHEME if scheme is None else scheme)
    if "lesion" not in scheme:
        raise ConfigError(f"label scheme {scheme} needs a 'lesion' entry (e.g. {DEFAULT_LABEL_SCHEME})")
    unknown = set(scheme) - {"background", "organ", "lesion"}
    if unknown:
        raise ConfigError(f"label scheme has unknown names {sorted(unknown)}; allowed: background, organ, lesion")
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
        seg = np.asarray(load_label_map(seg_path, name=seg_path).dataobj)
        return organ_mask(seg, case.meta["organ"], version=seg_info["label_version"])
    full = VoxelBox((0, 0, 0), tuple(int(n) for n in source_img.shape[:3]))  # type: ignore[arg-type]
    return resample_region_to_source(organ_std, std_affine, source_img.shape, source_img.affine, full, order=0,
                                     mode="constant")


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
) -> SynthesisResult:
    """Draw and texture every lesion box of `case_dir`, then write the results in the source CT's grid.

    `engine_options` = {"mask": {...}, "texture": {...}} are passed to engines given by name (e.g.
    checkpoint paths for the diffusion engine); `device` is added for engines other than "procedural".
    """
    scheme = check_label_scheme(label_scheme)
    case = PreprocessedCase.open(case_dir)
    out_dir = Path(out_dir)
    masker, texturer = make_engines(mask_engine, texture_engine, options=engine_options, device=device)

    std_img = nib.load(str(case.path("ct")))
    ct_before = np.asarray(std_img.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(case.path("organs"))).dataobj)
    spacing = tuple(float(z) for z in std_img.header.get_zooms()[:3])
    organ = case.meta["organ"]
    target = organ_mask(seg, organ, version=case.meta["segmentation"]["label_version"])
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

    rng = np.random.default_rng(seed)
    ct = ct_before.copy()
    lesion_ids = np.zeros(target.shape, dtype=np.uint8)
    lesions: list[dict[str, Any]] = []
    # an engine may choose which boxes it draws and in which order (released LMNet: > 50 voxels, largest first,
    # at most 3) and may drop a lesion that fails its selection (an empty mask), as the original inference does
    plan = getattr(masker, "plan_lesions", None)
    order = plan(boxes, target.shape) if plan is not None else range(len(boxes))
    skipped = [{"index": i + 1, "bbox": b.to_dict(), "reason": "not planned by the mask engine"}
               for i, b in enumerate(boxes) if i not in set(order)]
    for i in order:
        k, box = i + 1, boxes[i]
        # the report's size text follows its first lesion; each lesion is drawn and measured at its own box
        lesion_report = report.with_values(size=box.size)
        ctx = LesionContext(ct=ct, organ_seg=seg, organ_mask=target, organ_name=organ, spacing=spacing,
                            occupied=occupied.copy())
        t0 = time.perf_counter()
        mask = np.asarray(masker.generate_mask(ctx, box, lesion_report, rng), dtype=bool)
        t1 = time.perf_counter()
        if not mask.any() and getattr(masker, "skips_failed_lesions", False):
            skipped.append({"index": k, "bbox": box.to_dict(), "reason": "no acceptable mask (dropped)"})
            log.info("%s lesion %d: no acceptable mask, dropped as the original does", case.case_id, k)
            continue
        if not mask.any():
            raise InputError(f"case {case.case_id}: the mask engine drew an empty lesion in box {box.to_dict()}")
        rendered = np.clip(np.asarray(texturer.render(ctx, mask, lesion_report, rng), dtype=np.float32), *hu_range)
        t2 = time.perf_counter()
        adherence = measure_adherence(ct, rendered, mask, target, lesion_report, spacing)
        ct = rendered
        occupied |= mask
        lesion_ids[mask] = k
        lesions.append({"index": k, "bbox": box.to_dict(), "voxels_std": int(mask.sum()),
                        "seconds": {"mask": round(t1 - t0, 4), "texture": round(t2 - t1, 4)},
                        "adherence": adherence})
        log.info("%s lesion %d: %d voxels, %.2fs", case.case_id, k, int(mask.sum()), t2 - t0)

    written = write_back(source_img, std_img.affine, ct - ct_before, lesion_ids > 0, hu_range=hu_range)
    label = np.zeros(source_img.shape[:3], dtype=np.uint8)
    if "organ" in scheme:
        label[_source_organ_mask(case, source_img, target, std_img.affine)] = scheme["organ"]
    label[written.lesion] = scheme["lesion"]
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
                                  out_dir / "preview.png")
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
    }
    atomic_write_json(out_dir / "synthesis.json", record)
    return SynthesisResult(out_dir, Path(ct_path), Path(label_path), Path(report_path), record)
