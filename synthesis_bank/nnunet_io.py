"""What the nnU-Net side needs to know about a bank, without importing nnU-Net.

`synthesis_bank.prepare` writes a bank preprocessed with a target dataset's plans; the trainer in
`nnunet_trainers` reads it back. Both sides go through these helpers so the on-disk layout is defined once:

```
<bank>/manifest.jsonl                         one JSON object per line; only status "ok" lines are bank cases
<bank>/imagesTr/<case_id>_0000.nii.gz, <bank>/labelsTr/<case_id>.nii.gz
<bank>/nnUNet_preprocessed/<DatasetName>/prepared.json
      {"format": "ld-augment-prepared/1", "target_dataset": "<DatasetName>",
       "configurations": {"<data_identifier>": {"configuration", "plans_identifier", "plans_sha256",
                                               "manifest_sha256", "cases": [...], "nnunetv2_version", ...}}}
<bank>/nnUNet_preprocessed/<DatasetName>/<data_identifier>/   the cases in the target's own file format
```

The data folder holds only what nnU-Net's dataset classes expect (`infer_dataset_class` rejects foreign file
endings), which is why `prepared.json` sits one level up.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.nifti import sha256_file

PREPARED_FORMAT = "ld-augment-prepared/1"
PREPARED_DIRNAME = "nnUNet_preprocessed"
PREPARED_JSON = "prepared.json"
MANIFEST = "manifest.jsonl"

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".tif", ".tiff", ".png", ".b2nd", ".npz", ".npy")


@dataclass(frozen=True)
class BankCase:
    """One finished bank case, as far as training is concerned: its id and where its source came from."""

    case_id: str
    source_id: str | None
    source_file: str | None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def source_keys(self) -> set[str]:
        """Every spelling of the source case that could equal an nnU-Net case id (used for leakage checks)."""
        keys: set[str] = set()
        for value in (self.source_id, self.source_file):
            if value:
                keys.add(str(value))
                keys.add(normalize_case_id(str(value)))
        return keys


def normalize_case_id(value: str) -> str:
    """`/data/imagesTr/liver_003_0000.nii.gz` -> `liver_003`: strip folders, image endings and a channel suffix."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    for ending in _IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return _CHANNEL_SUFFIX.sub("", name)


def sha256_json(obj: Any) -> str:
    """Hash of a JSON document independent of key order and whitespace (plans are compared this way)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def manifest_path(bank_dir: str | Path) -> Path:
    return Path(bank_dir) / MANIFEST


def _missing_manifest(bank_dir: str | Path) -> InputError:
    path = manifest_path(bank_dir)
    if any(Path(bank_dir).glob("manifest.shard-*-of-*.jsonl")):
        return InputError(f"{path}: not found, only shard manifests; join them first: "
                          f"synthesis-bank merge {bank_dir}")
    return InputError(f"{path}: bank manifest not found; is {bank_dir} a bank folder (synthesis-bank build)?")


def manifest_sha256(bank_dir: str | Path) -> str:
    path = manifest_path(bank_dir)
    if not path.is_file():
        raise _missing_manifest(bank_dir)
    return sha256_file(path)


def read_bank_cases(bank_dir: str | Path) -> list[BankCase]:
    """The bank's finished cases in manifest order; a later line for the same case id replaces an earlier one.

    A final line without a newline is a write cut short by a kill and is ignored; any other unreadable line
    is an error, since silently dropping cases would change what the trainer mixes in.
    """
    path = manifest_path(bank_dir)
    if not path.is_file():
        raise _missing_manifest(bank_dir)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    latest: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # torn last line (no trailing newline)
                continue
            raise InputError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "case_id" not in record:
            raise InputError(f"{path}: line {number} has no 'case_id'")
        latest.pop(str(record["case_id"]), None)
        latest[str(record["case_id"])] = record
    cases = []
    for case_id, record in latest.items():
        if record.get("status", "ok") != "ok":
            continue
        cases.append(BankCase(case_id, _opt_str(record.get("source_id")), _opt_str(record.get("source_file")),
                              extra=record))
    return cases


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def split_leaking(cases: Iterable[BankCase], val_keys: Iterable[str]) -> tuple[list[BankCase], list[BankCase]]:
    """Split bank cases into (usable, excluded): excluded ones were made from a validation case of this fold."""
    val = {str(k) for k in val_keys} | {normalize_case_id(str(k)) for k in val_keys}
    usable, excluded = [], []
    for case in cases:
        (excluded if case.source_keys() & val else usable).append(case)
    return usable, excluded


def prepared_root(bank_dir: str | Path, dataset_name: str) -> Path:
    return Path(bank_dir) / PREPARED_DIRNAME / dataset_name


def prepared_data_folder(bank_dir: str | Path, dataset_name: str, data_identifier: str) -> Path:
    return prepared_root(bank_dir, dataset_name) / data_identifier


def prepare_command(bank_dir: str | Path, dataset_name: str, configuration: str, plans_identifier: str) -> str:
    cmd = f"synthesis-bank prepare --bank {bank_dir} --target {dataset_name} -c {configuration}"
    if plans_identifier != "nnUNetPlans":
        cmd += f" -p {plans_identifier}"
    return cmd


def load_prepared_record(bank_dir: str | Path, dataset_name: str, data_identifier: str, *,
                         configuration: str, plans_identifier: str) -> dict[str, Any]:
    """The prepare record for one target and data identifier; ConfigError with the fix if there is none."""
    fix = prepare_command(bank_dir, dataset_name, configuration, plans_identifier)
    path = prepared_root(bank_dir, dataset_name) / PREPARED_JSON
    if not path.is_file():
        raise ConfigError(f"bank {bank_dir} is not prepared for {dataset_name} ({path} missing). Run: {fix}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != PREPARED_FORMAT:
        raise ConfigError(f"{path}: unknown format {doc.get('format')!r}, expected {PREPARED_FORMAT}. Run: {fix}")
    record = doc.get("configurations", {}).get(data_identifier)
    if record is None:
        have = sorted(doc.get("configurations", {}))
        raise ConfigError(f"bank {bank_dir} is prepared for {dataset_name} with {have}, not {data_identifier}. "
                          f"Run: {fix}")
    return record
