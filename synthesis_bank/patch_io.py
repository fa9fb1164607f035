"""Where a patches bank's prepared data live, and what its record says (no nnU-Net import; both sides use it).

A bank prepared from patches lives under the target's own preprocessed folder, beside the target's data, so
staging `nnUNet_preprocessed` to node-local disk carries it along:

```
$nnUNet_preprocessed/<Target>/<data_identifier>_ldbank_<bank_id>/
    ldbank.json                 {"format", "bank", "manifest_sha256", "preprocessing_sha256", "label_mapping",
                                 "cases": {case_id: {"source": key, "method": ...}}, "sources": {key: {...}}, ...}
    sources/<key>.b2nd|_seg.b2nd|.pkl   each source (with its base label) preprocessed by nnU-Net, once
    patches/<case_id>.bin       the case's preprocessed patch, raw: data (C,...) float32, seg (1,...) int16,
                                its own class locations int32 [key, c, z, y, x]; shape, start (3,), location
                                keys and the source's location rows it covers are in ldbank.json
```

`bank_id` is a hash of the bank's resolved path (two banks never share a folder).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ld_augment.errors import ConfigError, InputError

PATCH_PREPARED_FORMAT = "ld-augment-prepared-patches/2"
RECORD = "ldbank.json"
SOURCES = "sources"
PATCHES = "patches"
PATCH_SUFFIX = ".bin"   # raw data | seg | location rows; shapes and offsets in ldbank.json


def bank_id(bank: str | Path) -> str:
    return hashlib.sha256(str(Path(bank).resolve()).encode()).hexdigest()[:10]


def patch_prepared_folder(preprocessed_root: str | Path, dataset_name: str, data_identifier: str,
                          bank: str | Path) -> Path:
    return Path(preprocessed_root) / dataset_name / f"{data_identifier}_ldbank_{bank_id(bank)}"


def is_patch_bank(cases: Any) -> bool:
    """True when any finished case of the bank is stored as a patch (manifest "storage" block)."""
    return any((getattr(c, "extra", c).get("storage") or {}).get("mode") == "patches" for c in cases)


def load_patch_record(folder: Path, *, fix: str) -> dict[str, Any]:
    path = Path(folder) / RECORD
    if not path.is_file():
        raise ConfigError(f"{path} missing: the patches bank is not prepared for this configuration. Run: {fix}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); run: {fix}") from None
    if record.get("format") != PATCH_PREPARED_FORMAT:
        raise ConfigError(f"{path}: format {record.get('format')!r}, expected {PATCH_PREPARED_FORMAT}; run: {fix}")
    return record
