"""What the nnU-Net side needs to know about a bank, without importing nnU-Net.

`synthesis_bank.prepare` writes a bank preprocessed with a target dataset's plans; the trainer in
`nnunet_trainers` reads it back. Both sides go through these helpers so the on-disk layout is defined once:

```
<bank>/manifest.jsonl                         one JSON object per line; only status "ok" lines are bank cases
<bank>/imagesTr/<case_id>_0000.nii.gz, <bank>/labelsTr/<case_id>.nii.gz
<bank>/nnUNet_preprocessed/<DatasetName>/prepared.json
      {"format": "ld-augment-prepared/2", "target_dataset": "<DatasetName>",
       "records": {"<plans_identifier>/<configuration>": {"data_identifier", "preprocessing_sha256",
                   "manifest_sha256", "label_mapping", "cases": [...], "excluded_test_sources", ...}},
       "data": {"<data_identifier>": {"<case_id>": {"preprocessing_sha256", "label_sha256", "inputs"}}},
       "target_images": {"imagesTr": {"<case_id>": {"sha256", "size", "mtime_ns"}}, "imagesTs": {...}}}
<bank>/nnUNet_preprocessed/<DatasetName>/<data_identifier>/   the cases in the target's own file format
```

The data folder holds only what nnU-Net's dataset classes expect (`infer_dataset_class` rejects foreign file
endings), which is why `prepared.json` sits one level up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.nifti import sha256_file

PREPARED_FORMAT = "ld-augment-prepared/2"
PREPARED_DIRNAME = "nnUNet_preprocessed"
PREPARED_JSON = "prepared.json"
MANIFEST = "manifest.jsonl"



@dataclass(frozen=True)
class BankCase:
    """One finished bank case, as far as training is concerned: its id and where its source came from."""

    case_id: str
    source_id: str | None
    source_file: str | None
    source_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
                              _opt_str(record.get("source_sha256")), extra=record))
    return cases


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def split_leaking(cases: Iterable[BankCase], val_keys: Iterable[str], val_sha256: Iterable[str] = (),
                  near: Mapping[str, Mapping[str, float]] | None = None) -> tuple[list[BankCase], list[BankCase]]:
    """Split bank cases into (usable, excluded): excluded ones were made from a held-out case.

    A case leaks when its source id equals a held-out case id verbatim (no suffix stripping: `amos_0001` is
    not `amos`), its source file's content (`source_sha256` in the manifest) equals a held-out image's, which
    also catches a source copied under another name, or `near` ({bank case: {target case: r}}, prepared.json's
    `near_duplicates`) says its image is a near-duplicate of a held-out image (an edited or re-saved copy).
    """
    val = {str(k) for k in val_keys}
    shas = {str(s) for s in val_sha256 if s}
    near = near or {}
    usable, excluded = [], []
    for case in cases:
        leaks = case.source_id in val or (case.source_sha256 is not None and case.source_sha256 in shas) \
            or any(k in val for k in near.get(case.case_id, {}))
        (excluded if leaks else usable).append(case)
    return usable, excluded


# Plans fields that change what nnU-Net's preprocessor writes for a case. Not batch size, architecture or patch
# size (the patch size only sets blosc2 chunking): ResEnc M/L/XL plans share a data identifier and these values,
# so preparing for one does not invalidate the others.
PLANS_PREPROCESSING_KEYS = ("transpose_forward", "transpose_backward", "foreground_intensity_properties_per_channel",
                            "image_reader_writer")
CONFIG_PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes",
                             "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
                             "resampling_fn_seg", "resampling_fn_seg_kwargs")


def preprocessing_fields(plans: dict[str, Any], configuration: dict[str, Any],
                         target_labels: dict[str, Any]) -> dict[str, Any]:
    """What a prepared case depends on: the plans' and the (resolved) configuration's preprocessing settings and
    the target's labels (regions decide the foreground locations nnU-Net samples)."""
    return {"plans": {k: plans.get(k) for k in PLANS_PREPROCESSING_KEYS},
            "configuration": {k: configuration.get(k) for k in CONFIG_PREPROCESSING_KEYS},
            "labels": target_labels, "regions_class_order": None}


def preprocessing_sha256(plans: dict[str, Any], configuration: dict[str, Any], target_json: dict[str, Any]) -> str:
    fields = preprocessing_fields(plans, configuration, target_json.get("labels", {}))
    fields["regions_class_order"] = target_json.get("regions_class_order")
    return sha256_json(fields)


def record_key(plans_identifier: str, configuration: str) -> str:
    """Prepare records are kept per (plans identifier, configuration): `nnUNetResEncUNetMPlans/3d_fullres`."""
    return f"{plans_identifier}/{configuration}"


def prepared_root(bank_dir: str | Path, dataset_name: str) -> Path:
    return Path(bank_dir) / PREPARED_DIRNAME / dataset_name


def prepared_data_folder(bank_dir: str | Path, dataset_name: str, data_identifier: str) -> Path:
    return prepared_root(bank_dir, dataset_name) / data_identifier


def prepare_command(bank_dir: str | Path, dataset_name: str, configuration: str, plans_identifier: str) -> str:
    cmd = f"synthesis-bank prepare --bank {bank_dir} --target {dataset_name} -c {configuration}"
    if plans_identifier != "nnUNetPlans":
        cmd += f" -p {plans_identifier}"
    return cmd


def load_prepared(bank_dir: str | Path, dataset_name: str) -> dict[str, Any]:
    """The whole `prepared.json` of one target ({} if the bank was never prepared for it)."""
    path = prepared_root(bank_dir, dataset_name) / PREPARED_JSON
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); delete it and run synthesis-bank prepare again") from None
    if doc.get("format") != PREPARED_FORMAT:
        return {}   # an older layout: everything is prepared again
    return doc


def load_prepared_record(bank_dir: str | Path, dataset_name: str, *, configuration: str,
                         plans_identifier: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(record of this plans identifier + configuration, the whole prepared.json); ConfigError with the fix."""
    fix = prepare_command(bank_dir, dataset_name, configuration, plans_identifier)
    path = prepared_root(bank_dir, dataset_name) / PREPARED_JSON
    if not path.is_file():
        raise ConfigError(f"bank {bank_dir} is not prepared for {dataset_name} ({path} missing). Run: {fix}")
    doc = load_prepared(bank_dir, dataset_name)
    if not doc:
        raise ConfigError(f"{path}: written by an older ld-augment (expected format {PREPARED_FORMAT}). Run: {fix}")
    key = record_key(plans_identifier, configuration)
    record = doc.get("records", {}).get(key)
    if record is None:
        have = sorted(doc.get("records", {}))
        raise ConfigError(f"bank {bank_dir} is prepared for {dataset_name} with {have}, not {key}. Run: {fix}")
    return record, doc
