"""The preprocessed case folder: what `preprocess` writes and `synthesize` reads (layout in DEVELOPERS.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ld_augment.errors import InputError
from ld_augment.io.textfile import read_text_bounded

CASE_FORMAT = "ld-augment-case/1"
CASE_FILES = {
    "case": "case.json",
    "ct": "ct.nii.gz",
    "organs": "organs.nii.gz",
    "report": "report.json",
    "bboxes": "bboxes.nii.gz",
    "preview": "preview.png",
}


@dataclass
class PreprocessedCase:
    """A case folder on disk and its parsed case.json."""

    case_dir: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, key: str) -> Path:
        return self.case_dir / CASE_FILES[key]

    @property
    def case_id(self) -> str:
        return str(self.meta["case_id"])

    @classmethod
    def open(cls, case_dir: str | Path) -> "PreprocessedCase":
        """Read a case folder written by `ld-augment preprocess`, with a clear error if it is not one."""
        case_dir = Path(case_dir)
        meta_path = case_dir / CASE_FILES["case"]
        if not meta_path.is_file():
            raise InputError(f"{case_dir}: not a preprocessed case folder (no {CASE_FILES['case']}); "
                             "run `ld-augment preprocess` first")
        try:
            meta = json.loads(read_text_bounded(meta_path, what="case file", error=InputError))
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path}: not valid JSON ({exc})") from exc
        if meta.get("format") != CASE_FORMAT:
            raise InputError(f"{meta_path}: unknown case format {meta.get('format')!r}, expected {CASE_FORMAT!r}")
        for key in ("ct", "organs", "report", "bboxes"):
            if not (case_dir / CASE_FILES[key]).is_file():
                raise InputError(f"{case_dir}: incomplete case folder, {CASE_FILES[key]} is missing")
        return cls(case_dir=case_dir, meta=meta)
