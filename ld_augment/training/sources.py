"""Where training cases come from: case folders, the original's eight list files, or an nnU-Net raw dataset.

Every reader returns `TrainingCase`s after checking, up front and for all rows at once, that the files exist,
that the grids of one case agree and that the reports parse; the error lists each problem with its row (or
case), file and reason, so a user fixes a data set in one pass instead of one crash per epoch.

List files (the original's format; README of LesionDiffusion): `<split>_img_list.txt` (CT; the original's
configs and demo name it `<split>_image_list.txt`, read as well),
`<split>_label_list.txt` (0/1/2 label), `<split>_type_list.txt` (type.json report), `<split>_seg_list.txt`
(organ segmentation), aligned by row; paths absolute or relative to the list's folder. The original's LMNet
configs also take a `coarseg_list`: the organ map of the lesion CT, where `seg_list` may point at the healthy
CT's map for paired synthetic data; with real data both are the same file. Here the organ channel is read
from `seg_list`; a `<split>_coarseg_list.txt`, when present, is checked for alignment and grid only.

nnU-Net raw dataset: `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz` (0 background, 1 organ,
2 lesion), organ maps in `totalsegTr/<case>.nii.gz` and reports in `reportsTr/<case>.json`; a case without a
report gets one derived from its label and organ map (`data.derive_report`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import nibabel as nib

from ld_augment.errors import InputError
from ld_augment.io.textfile import MAX_LIST_BYTES, read_text_bounded
from ld_augment.io.nifti import check_same_grid, strip_nifti_suffix
from ld_augment.reports import load_reports
from ld_augment.training.data import TrainingCase, find_cases

log = logging.getLogger(__name__)

LIST_KINDS = {"ct": "img", "label": "label", "report": "type", "seg": "seg"}  # our kind -> the list's infix
MAX_SHOWN = 20


#: Other names of a list (the original's configs and demo call the CT list `train_image_list.txt`)
LIST_ALIASES = {"img": ("image",)}


def list_file(folder: Path, split: str, infix: str) -> Path:
    """The list file of `infix` in `folder`: the README's name, else an alias that exists (configs' name)."""
    path = folder / f"{split}_{infix}_list.txt"
    if not path.is_file():
        for alias in LIST_ALIASES.get(infix, ()):
            other = folder / f"{split}_{alias}_list.txt"
            if other.is_file():
                return other
    return path


def folder_names(path: Path | None) -> tuple[str | None, str | None]:
    """(organ, disease) folders of the original's layout <organ>/<disease>/<case>/<file> (None when too shallow)."""
    if path is None or len(path.parts) < 5:
        return None, None
    return path.parts[-4], path.parts[-3]


def is_list_folder(folder: Path, split: str = "train") -> bool:
    return list_file(folder, split, "label").is_file() or list_file(folder, split, "img").is_file()


def is_nnunet_dataset(folder: Path) -> bool:
    return (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir()


def _read_rows(path: Path) -> list[str]:
    try:
        lines = read_text_bounded(path, what="list file", limit=MAX_LIST_BYTES, error=InputError).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file {path} is not readable text ({exc})") from None
    while lines and not lines[-1].strip():  # a trailing newline / blank tail is not a row
        lines.pop()
    return [line.strip() for line in lines]


def _resolve(row: str, base: Path) -> Path:
    p = Path(os.path.expanduser(row))
    return p if p.is_absolute() else base / p


class _Problems:
    """Collects validation problems; raises one InputError listing them all."""

    def __init__(self, what: str) -> None:
        self.what, self.items = what, []  # type: ignore[var-annotated]

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            shown = "\n  ".join(self.items[:MAX_SHOWN])
            more = f"\n  ... and {len(self.items) - MAX_SHOWN} more" if len(self.items) > MAX_SHOWN else ""
            raise InputError(f"{self.what}: {len(self.items)} problem(s):\n  {shown}{more}")


def _check_case(where: str, paths: dict[str, Path | None], problems: _Problems) -> None:
    """Existence, readable NIfTI headers, one grid for the case's volumes, a parseable report."""
    headers: dict[str, tuple[Path, nib.spatialimages.SpatialImage]] = {}
    for kind, path in paths.items():
        if path is None:
            continue
        if not path.is_file():
            problems.add(f"{where}: {kind} file {path} does not exist")
            continue
        if kind == "report":
            try:
                load_reports(path)
            except InputError as exc:
                problems.add(f"{where}: {exc}")
            continue
        try:
            headers[kind] = (path, nib.load(str(path)))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad file
            problems.add(f"{where}: {kind} file {path} is not a readable NIfTI ({exc})")
    ref = headers.get("label") or headers.get("ct")
    for kind, (path, img) in headers.items():
        if ref is None or path == ref[0]:
            continue
        try:
            check_same_grid(ref[1], img, name_a=str(ref[0]), name_b=str(path))
        except InputError as exc:
            problems.add(f"{where}: {exc}")


def _case_ids(rows: list[dict[str, Path | None]]) -> list[str]:
    """Case ids from the image file names, or their folders where the names repeat (demo layout: */ct.nii.gz)."""
    files = [r.get("ct") or r.get("label") or r.get("seg") for r in rows]
    stems = [(strip_nifti_suffix(f.name) or f.stem) if f is not None else f"row{i + 1}" for i, f in enumerate(files)]
    if len(set(stems)) < len(stems):
        folders = [f.parent.name if f is not None else s for f, s in zip(files, stems)]
        stems = folders if len(set(folders)) == len(folders) else [f"{s}_row{i + 1}" for i, s in enumerate(stems)]
    return stems


def read_list_files(folder: str | os.PathLike, *, split: str = "train",
                    need: Sequence[str] = ("label", "seg", "report")) -> list[TrainingCase]:
    """Cases from the original's row-aligned list files `<split>_{img,label,type,seg}_list.txt` in `folder`."""
    root = Path(folder)
    lists: dict[str, Path] = {}
    for kind, infix in LIST_KINDS.items():
        path = list_file(root, split, infix)
        if path.is_file():
            lists[kind] = path
        elif kind in need:
            raise InputError(f"list file {path} is missing; the {split} split needs "
                             f"{', '.join(list_file(root, split, LIST_KINDS[k]).name for k in need)}")
    coarse = list_file(root, split, "coarseg")
    rows = {kind: _read_rows(path) for kind, path in lists.items()}
    if coarse.is_file():
        rows["coarseg"], lists["coarseg"] = _read_rows(coarse), coarse
    counts = {lists[k].name: len(v) for k, v in rows.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"{root}: the list files are not row-aligned (rows: "
                         f"{', '.join(f'{n} {c}' for n, c in counts.items())}); line i of every list is one case")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise InputError(f"{root}: the {split} list files hold no rows")
    problems = _Problems(f"{root} ({split} lists)")
    all_paths = []
    for i in range(n):
        paths: dict[str, Path | None] = {}
        for kind, values in rows.items():
            if not values[i]:
                problems.add(f"row {i + 1} of {lists[kind].name}: empty line")
                paths[kind] = None
            else:
                paths[kind] = _resolve(values[i], lists[kind].parent)
        _check_case(f"row {i + 1}", paths, problems)
        all_paths.append(paths)
    problems.raise_if_any()
    cases = []
    for case_id, paths in zip(_case_ids(all_paths), all_paths):
        seg = paths.get("seg")
        organ_folder, disease = folder_names(paths.get("ct") or paths.get("label"))
        cases.append(TrainingCase(case_id, paths.get("label"), seg, "v1" if seg and "v1" in seg.name else "auto",
                                  paths.get("report"), paths.get("ct"), disease=disease, organ_folder=organ_folder))
    if "coarseg" in rows and rows["coarseg"] != rows.get("seg"):
        log.warning("%s differs from %s: the organ channel is read from seg_list (coarseg_list is checked only)",
                    coarse.name, list_file(root, split, "seg").name)
    return cases


def read_nnunet_dataset(folder: str | os.PathLike, *, need: Sequence[str] = ("label", "seg", "report")
                        ) -> list[TrainingCase]:
    """Cases of an nnU-Net raw dataset (training split); reports derived where `reportsTr/<case>.json` is absent."""
    root = Path(folder)
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    problems = _Problems(f"nnU-Net dataset {root}")
    dataset_json = root / "dataset.json"
    if dataset_json.is_file():
        try:
            labels = json.loads(read_text_bounded(dataset_json, what="dataset.json", limit=MAX_LIST_BYTES,
                                                  error=InputError)).get("labels", {})
        except json.JSONDecodeError as exc:
            raise InputError(f"{dataset_json} is not valid JSON ({exc})") from None
        ids = sorted(int(v) for v in labels.values() if not isinstance(v, list))
        if ids and ids != [0, 1, 2]:
            raise InputError(f"{dataset_json}: labels {labels} must be 0 background, 1 organ, 2 lesion for "
                             "lesion-synthesis training")
    cases = []
    label_files = sorted(p for p in labels_dir.iterdir() if strip_nifti_suffix(p.name))
    if not label_files:
        raise InputError(f"{labels_dir} holds no label files")
    for label in label_files:
        case_id = strip_nifti_suffix(label.name) or label.name
        suffix = label.name[len(case_id):]
        ct = images_dir / f"{case_id}_0000{suffix}"
        seg = root / "totalsegTr" / f"{case_id}{suffix}"
        report = root / "reportsTr" / f"{case_id}.json"
        paths: dict[str, Path | None] = {"label": label, "ct": ct if ("ct" in need or ct.is_file()) else None,
                                         "seg": seg if ("seg" in need or seg.is_file()) else None,
                                         "report": report if report.is_file() else None}
        _check_case(f"case {case_id}", paths, problems)
        cases.append(TrainingCase(case_id, label, paths["seg"], "auto", paths["report"], paths["ct"],
                                  derive_report=paths["report"] is None))
    problems.raise_if_any()
    return cases


def read_training_data(data: str | os.PathLike, *, need: Sequence[str] = ("label", "seg", "report"),
                       split: str = "train") -> list[TrainingCase]:
    """Any of the three layouts, recognised by its files (list files, nnU-Net raw, else case folders)."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"training data {root} is not a folder (case folders, list files or an nnU-Net dataset)")
    if is_list_folder(root, split):
        return read_list_files(root, split=split, need=need)
    if is_nnunet_dataset(root):
        return read_nnunet_dataset(root, need=need)
    return find_cases(root, need=need)
