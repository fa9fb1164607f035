"""Enumerate a recipe's source CTs (folder, list file, or nnU-Net raw dataset) into `Source` records.

Done eagerly, before any case is synthesized, so a missing file or a mismatched label set stops the build at
once instead of after hours; a source that exists but is unreadable is the builder's business (logged, skipped).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ld_augment.errors import ConfigError
from ld_augment.io.nifti import NIFTI_SUFFIXES, strip_nifti_suffix
from ld_augment.io.textfile import MAX_LIST_BYTES, read_bytes_bounded, read_text_bounded

from synthesis_bank.label_mapping import names_organ, source_roles
from synthesis_bank.recipe import Recipe

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Source:
    """One source CT. `label` is set for already-labelled training cases (nnU-Net raw sources), with
    `label_classes` the (name, value) pairs of their dataset.json."""

    source_id: str
    image: Path
    seg: Path | None = None
    label: Path | None = None
    label_classes: tuple[tuple[str, int], ...] = ()

    def labels_organ(self, organ: str) -> bool:
        """Does this source's own label map annotate `organ` (then it is the organ segmentation)?"""
        return any(names_organ(name, organ) for name, _ in self.label_classes)


def _find_seg(folder: Path | None, file_name: str, source_id: str) -> Path | None:
    """A segmentation with the same file name as the CT (or `<source_id>.nii.gz`), if any."""
    if folder is None:
        return None
    for candidate in (folder / file_name, folder / f"{source_id}.nii.gz", folder / f"{source_id}.nii"):
        if candidate.is_file():
            return candidate
    return None


def _from_folder(recipe: Recipe) -> list[Source]:
    out = []
    hidden = []
    for path in sorted(recipe.sources.path.iterdir()):
        source_id = strip_nifti_suffix(path.name)
        if source_id is None or not path.is_file():
            continue
        if path.name.startswith("."):  # editor/OS droppings (._x.nii.gz) are usually not CTs: skipped, but said
            hidden.append(path.name)
            continue
        out.append(Source(source_id, path, _find_seg(recipe.sources.segmentations, path.name, source_id)))
    if hidden:
        log.warning("%s: skipped %d hidden file(s) whose names start with '.': %s; rename them to include them",
                    recipe.sources.path, len(hidden), ", ".join(hidden[:5]) + (" ..." if len(hidden) > 5 else ""))
    return out


def _looks_like_nifti(text: str) -> bool:
    return strip_nifti_suffix(Path(text).name) is not None


def _from_list_file(recipe: Recipe) -> list[Source]:
    """Lines 'ct_path[,seg_path]'. Errors name the file and line number but never echo a line that is not a
    NIfTI path: a list_file pointed at the wrong (maybe private) file must not leak its contents."""
    list_file = recipe.sources.path
    try:
        text = read_bytes_bounded(list_file, what="list file", limit=MAX_LIST_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{list_file}: not a UTF-8 text list file (byte {exc.start}); expected lines "
                          "'ct_path[,seg_path]'") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) > 2 or not all(parts) or not all(_looks_like_nifti(p) for p in parts):
            raise ConfigError(f"{list_file}:{lineno}: expected 'ct_path[,seg_path]' naming .nii/.nii.gz files "
                              f"({len(parts)} comma-separated field(s) found; line not shown)")
        paths = []
        for p in parts:
            path = Path(p).expanduser()
            path = path if path.is_absolute() else list_file.parent / path
            if not path.is_file():
                raise ConfigError(f"{list_file}:{lineno}: file not found: {path}")
            paths.append(path.resolve())
        source_id = strip_nifti_suffix(paths[0].name) or paths[0].stem
        out.append(Source(source_id, paths[0], paths[1] if len(paths) == 2 else None))
    return out


def _from_nnunet_raw(recipe: Recipe) -> list[Source]:
    root = recipe.sources.path
    ds_file = root / "dataset.json"
    if not ds_file.is_file():
        raise ConfigError(f"{root}: nnU-Net raw dataset has no dataset.json")
    try:
        ds = json.loads(read_text_bounded(ds_file, what="dataset.json", limit=MAX_LIST_BYTES))
    except ValueError as exc:
        raise ConfigError(f"{ds_file}: not valid JSON: {exc}") from exc
    ending = ds.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise ConfigError(f"{ds_file}: file_ending {ending!r} is not supported; choices: {list(NIFTI_SUFFIXES)}")
    channels = ds.get("channel_names") or ds.get("modality") or {}
    if len(channels) != 1:
        raise ConfigError(f"{ds_file}: lesion synthesis needs a single CT channel, got channel_names {channels}")
    classes = _label_classes(ds_file, ds.get("labels") or {}, recipe)
    out = []
    for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        case_id = image.name[: -len(f"_0000{ending}")]
        label = root / "labelsTr" / f"{case_id}{ending}"
        if not label.is_file():
            raise ConfigError(f"{root}: case {case_id} has no label file {label}")
        out.append(Source(case_id, image, _find_seg(recipe.sources.segmentations, f"{case_id}{ending}", case_id), label,
                          classes))
    return out


def _label_classes(ds_file: Path, labels: dict, recipe: Recipe) -> tuple[tuple[str, int], ...]:
    """The source's (name, value) label pairs; each must read as organ, other organ or lesion for every recipe
    organ (`synthesis_bank.label_mapping.source_roles`), which refuses region-based label maps."""
    if "background" not in labels:
        raise ConfigError(f"{ds_file}: labels {labels} have no background")
    for organ in recipe.organs:
        try:
            source_roles(labels, organ)
        except ConfigError as exc:
            raise ConfigError(f"{ds_file}: {exc}") from None
    return tuple((str(k), int(v)) for k, v in labels.items())


_SOURCE_READERS = {"folder": _from_folder, "list_file": _from_list_file, "nnunet_raw": _from_nnunet_raw}


def enumerate_sources(recipe: Recipe) -> list[Source]:
    """All sources in a stable order; raises ConfigError for an empty set, duplicate ids, or missing organ masks."""
    sources = _SOURCE_READERS[recipe.sources.kind](recipe)
    if not sources:
        raise ConfigError(f"{recipe.origin}: no source CTs (*.nii.gz) found in {recipe.sources.path}")
    seen: dict[str, Path] = {}
    for src in sources:
        if src.source_id in seen:
            raise ConfigError(
                f"{recipe.origin}: two sources share the id {src.source_id!r} ({seen[src.source_id]} and {src.image}); "
                "source ids (file names without .nii.gz) must be unique"
            )
        seen[src.source_id] = src.image
    if recipe.segmentation == "error":
        missing = [s.source_id for s in sources
                   if s.seg is None and not all(s.labels_organ(o) for o in recipe.organs)]
        if missing:
            raise ConfigError(
                f"{recipe.origin}: segmentation: error, but {len(missing)} source(s) have no organ segmentation "
                f"(first: {missing[:5]}); give them or set segmentation: totalsegmentator"
            )
    return sources


def safe_id(source_id: str) -> str:
    """A file-name-safe form of a source id for case ids (nnU-Net identifiers become file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source_id)
