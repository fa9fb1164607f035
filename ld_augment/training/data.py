"""Training cases on disk: discovery, validation and loading into the standardized grid.

Layout of a training folder (one sub-folder per case; the LesionDiffusion demo layout is accepted too)::

    <data_dir>/<case>/ct.nii.gz          CT in HU (needed by LINet and the VQ, optional for LMNet)
    <data_dir>/<case>/label.nii.gz       0 background / 1 target organ / 2 lesion (float-stored ok)
    <data_dir>/<case>/totalseg.nii.gz    TotalSegmentator organ map, v1 or v2 ids (converted to v1)
                      totalseg_v1.nii.gz (shared-data name; read as v1)
    <data_dir>/<case>/report.json        the type.json report of the lesion(s)

Cases are loaded into the standardized grid (RAS, `spacing` mm) that ld-augment's inference works in, so a
network trained here sees anatomy in the same orientation as at synthesis time; `spacing=None` keeps each
case's own voxel spacing (the original read native spacing) and only reorients it to RAS (nibabel's closest
canonical, no resampling). Arrays are indexed (i, j, k) in that grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ld_augment.engines.diffusion.intensity import normalize_ct
from ld_augment.errors import ConfigError, InputError
from ld_augment.io.nifti import check_same_grid, load_ct, load_label_map
from ld_augment.io.standardize import standardize_image
from ld_augment.organs.masks import detect_label_version
from ld_augment.organs.registry import convert_labels
from ld_augment.reports import LesionReport, load_reports
from ld_augment.reports.model import new_report

CT_NAME = "ct.nii.gz"
LABEL_NAME = "label.nii.gz"
SEG_NAMES = ("totalseg.nii.gz", "totalseg_v1.nii.gz")
REPORT_NAME = "report.json"
LAYOUT_HELP = (
    "expected one sub-folder per case holding label.nii.gz (0 bg / 1 organ / 2 lesion), totalseg.nii.gz "
    "(or totalseg_v1.nii.gz), report.json (type.json) and, for LINet/VQ, ct.nii.gz"
)
ORGAN, LESION = 1, 2
V1_MAX_ID = 104  # the organ channel is seg / 104 (ARCHITECTURE.md 3)

# Training must see CTs exactly as inference maps them: one HU -> [0, 1] map for both (ARCHITECTURE.md 3).
normalize_hu = normalize_ct


@dataclass(frozen=True)
class TrainingCase:
    """Paths of one case (None where the file is absent and the network does not need it)."""

    case_id: str
    label: Path | None
    seg: Path | None
    seg_version: str  # "v1" when the file name says so, else "auto"
    report: Path | None
    ct: Path | None
    derive_report: bool = False  # no report file: derive one from the label and organ map (nnU-Net datasets)
    disease: str | None = None  # the original's disease folder name (list files: <organ>/<disease>/<case>/...)
    organ_folder: str | None = None  # ... and its organ folder name (both set the released cavity phrase)


def _seg_file(folder: Path) -> tuple[Path | None, str]:
    for name in SEG_NAMES:
        if (folder / name).is_file():
            return folder / name, ("v1" if "v1" in name else "auto")
    return None, "auto"


def find_cases(data_dir: str | os.PathLike, *, need: Sequence[str] = ("label", "seg", "report")) -> list[TrainingCase]:
    """All case folders of `data_dir` (sorted by name), checking that each has the files in `need`.

    `need` is a subset of {"label", "seg", "report", "ct"}. Folders with none of the known files are skipped
    (e.g. a stray `runs/` folder); a folder with some but not all needed files is an InputError naming it.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist; {LAYOUT_HELP}")
    unknown = sorted(set(need) - {"label", "seg", "report", "ct"})
    if unknown:
        raise ConfigError(f"find_cases: unknown file kinds {unknown}")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        seg, version = _seg_file(folder)
        found = {
            "label": folder / LABEL_NAME if (folder / LABEL_NAME).is_file() else None,
            "seg": seg,
            "report": folder / REPORT_NAME if (folder / REPORT_NAME).is_file() else None,
            "ct": folder / CT_NAME if (folder / CT_NAME).is_file() else None,
        }
        if not any(found.values()):
            continue
        missing = [k for k in need if found[k] is None]
        if missing:
            names = {"label": LABEL_NAME, "seg": " or ".join(SEG_NAMES), "report": REPORT_NAME, "ct": CT_NAME}
            raise InputError(f"case folder {folder} lacks {', '.join(names[k] for k in missing)}; {LAYOUT_HELP}")
        cases.append(TrainingCase(folder.name, found["label"], found["seg"], version, found["report"], found["ct"]))
    if not cases:
        raise InputError(f"no training cases found in {root}; {LAYOUT_HELP}")
    return cases


@dataclass
class LoadedCase:
    """One case as arrays in the training grid; `lesion`/`organ`/`seg_v1`/`report` are None for VQ-only cases."""

    case_id: str
    ct: np.ndarray | None          # float32 HU
    lesion: np.ndarray | None      # bool, label == 2
    organ: np.ndarray | None       # bool, label >= 1 (the target organ including its lesion)
    seg_v1: np.ndarray | None      # uint8 TotalSegmentator v1 ids
    report: LesionReport | None
    shape: tuple[int, int, int]
    label: np.ndarray | None = None          # uint8 0/1/2 as stored (the original sums these per organ)
    reports: tuple[LesionReport, ...] = ()   # every report of the case's file (all organ keys)


def _standardized(img: nib.spatialimages.SpatialImage, spacing: Sequence[float] | None, is_label: bool
                  ) -> nib.spatialimages.SpatialImage:
    if spacing is None:
        return nib.as_closest_canonical(img)  # native spacing, RAS axis order (what the layouts start from)
    return standardize_image(img, spacing, is_label=is_label)


def _pick_report(reports: list[LesionReport], seg_v1: np.ndarray, organ: np.ndarray, source: Path) -> LesionReport:
    """The report of the labelled organ: the organ id most frequent under label 1/2 (first report on a tie)."""
    if len(reports) == 1:
        return reports[0]
    ids = seg_v1[organ]
    counts = np.bincount(ids, minlength=V1_MAX_ID + 1) if ids.size else np.zeros(V1_MAX_ID + 1, int)
    ranked = sorted(reports, key=lambda r: -int(counts[r.organ_id]) if r.organ_id < len(counts) else 0)
    if counts[ranked[0].organ_id] == 0:
        raise InputError(f"{source}: none of the report's organs {[r.organ_id for r in reports]} lies under label 1/2")
    return ranked[0]


ISO_HU = 10.0  # |lesion - organ| mean HU below which a derived report says "isodense"


def derive_report(lesion: np.ndarray, organ: np.ndarray, seg_v1: np.ndarray, ct: np.ndarray | None,
                  source: Path) -> LesionReport:
    """A report for a case that has none: the organ under the label, the lesion's box size and, with a CT, its
    mean HU and density relative to the rest of the organ. Attributes an image cannot tell are left out."""
    ids = seg_v1[organ]
    ids = ids[ids > 0]
    if not ids.size:
        raise InputError(f"{source}: no organ of the segmentation lies under label 1/2, so no report can be derived; "
                         "give a report file")
    organ_id = int(np.bincount(ids).argmax())
    where = np.argwhere(lesion)
    size = tuple(int(v) for v in where.max(0) - where.min(0) + 1)
    values: dict[str, object] = {}
    if ct is not None:
        inside = float(ct[lesion].mean())
        rest = ct[organ & ~lesion]
        values["ct_value"] = round(inside)
        if rest.size:
            diff = inside - float(rest.mean())
            values["density"] = ("isodense lesion" if abs(diff) < ISO_HU else
                                 "hyperdense lesion" if diff > 0 else "hypodense lesion")
    return new_report(organ_id, values, [size])


def load_case(case: TrainingCase, *, spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
              need_ct: bool = False, need_lesion: bool = True, float16_hu: bool = False,
              need_organs: bool = True) -> LoadedCase:
    """Load, validate and standardize one case.

    float16_hu rounds the CT's HU to float16 first, as the original's loader did (so the normalised image is
    bit-identical to what the released networks were trained on). need_organs=False (the released VQ, whose
    original config lists only images and labels) reads the label without organ map and report.

    Errors are InputErrors naming the file: labels other than 0/1/2, a case without lesion voxels (a crop
    around "the lesion" would be meaningless), grids that differ between files, a missing CT when `need_ct`.
    """
    ct = ct_img = None
    if case.ct is not None and need_ct:
        ct_img = load_ct(case.ct, name="CT")
        ct = np.asarray(_standardized(ct_img, spacing, False).dataobj, dtype=np.float32)
        if float16_hu:
            ct = ct.astype(np.float16).astype(np.float32)
    elif need_ct:  # LMNet (need_ct=False) never reads the CT, even when present
        raise InputError(f"case {case.case_id}: {CT_NAME} is needed for this network but absent")
    if not need_lesion:
        if ct is None:
            raise InputError(f"case {case.case_id}: no {CT_NAME}")
        return LoadedCase(case.case_id, ct, None, None, None, None, tuple(ct.shape))  # type: ignore[arg-type]
    if not need_organs:
        if case.label is None or ct_img is None:
            raise InputError(f"case {case.case_id}: a CT and its label (2 = lesion) are needed; {LAYOUT_HELP}")
        label_img = load_label_map(case.label, name="lesion label")
        check_same_grid(ct_img, label_img, name_a=str(case.ct), name_b=str(case.label))
        label = np.asarray(_standardized(label_img, spacing, True).dataobj).astype(np.uint8)
        if not (label == LESION).any():
            raise InputError(f"{case.label}: the case has no lesion voxels (label 2); released VQ crops are centred "
                             "on the largest lesion")
        return LoadedCase(case.case_id, ct, label == LESION, None, None, None, tuple(label.shape), label)
    if case.label is None or case.seg is None or (case.report is None and not case.derive_report):
        raise InputError(f"case {case.case_id}: label, segmentation and report are needed; {LAYOUT_HELP}")
    label_img = load_label_map(case.label, name="lesion label", like=ct_img, like_name=str(case.ct))
    seg_img = load_label_map(case.seg, name="organ segmentation", like=label_img, like_name=str(case.label))
    check_same_grid(label_img, seg_img, name_a=str(case.label), name_b=str(case.seg))
    if ct_img is not None:
        check_same_grid(ct_img, label_img, name_a=str(case.ct), name_b=str(case.label))
    label = np.asarray(_standardized(label_img, spacing, True).dataobj)
    values = set(np.unique(label).tolist()) - {0, ORGAN, LESION}
    if values:
        raise InputError(f"{case.label}: labels must be 0 (background), 1 (organ), 2 (lesion); found also "
                         f"{sorted(values)[:10]}")
    lesion = label == LESION
    if not lesion.any():
        raise InputError(f"{case.label}: the case has no lesion voxels (label 2); training crops are centred on "
                         "lesions, so remove the case or add its lesion annotation")
    seg = np.asarray(_standardized(seg_img, spacing, True).dataobj)
    version = detect_label_version(seg, override=None if case.seg_version == "auto" else case.seg_version)
    if version == "binary":
        raise InputError(f"{case.seg}: a binary mask is not an organ map; give TotalSegmentator v1 or v2 ids")
    if version == "v1" and int(seg.max()) > V1_MAX_ID:
        raise InputError(f"{case.seg}: label {int(seg.max())} is outside TotalSegmentator v1 (1..{V1_MAX_ID})")
    seg_v1 = convert_labels(seg, version, "v1") if version != "v1" else seg.astype(np.uint8)
    organ = label >= ORGAN
    if case.report is None:
        report = derive_report(lesion, organ, seg_v1, ct, case.label)
        reports = (report,)
    else:
        reports = tuple(load_reports(case.report))
        report = _pick_report(list(reports), seg_v1, organ, case.report)
    return LoadedCase(case.case_id, ct, lesion, organ, seg_v1, report, tuple(label.shape),  # type: ignore[arg-type]
                      label.astype(np.uint8), reports)
