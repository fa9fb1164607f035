"""`synthesis-bank materialize`: compose a patches bank's full cases into imagesTr/labelsTr for stock tools.

nnU-Net's own commands (verify_dataset_integrity, plan_and_preprocess, scripts/expand_dataset.py's copies) read
full NIfTI files. A `storage: patches` bank keeps only each case's patch (synthesis_bank.patch_store), so this
writes the full files, bit-identical to what a full-copy bank holds (sha256 checked against the manifest), and
rewrites dataset.json, which lists a case only once its files exist. The trainer route never needs this: it
composes at load time from the prepared source and patch (synthesis_bank.prepare_patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ld_augment.errors import ConfigError

from synthesis_bank.lock import bank_lock
from synthesis_bank.manifest import (case_files_verified, collect_entries, image_path, label_path,
                                     write_dataset_json)
from synthesis_bank.patch_store import BaseLabels, compose_case


@dataclass
class MaterializeResult:
    written: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)   # full files already there and matching the manifest


def _full_verified(bank: Path, entry: dict) -> bool:
    full = {k: v for k, v in entry.items() if k != "storage"}
    return case_files_verified(bank, full)


def materialize_bank(bank_dir: str | Path, *, progress: bool = False) -> MaterializeResult:
    """Write imagesTr/labelsTr files of every ok patch case that lacks them (or whose files do not match the
    manifest), then dataset.json. Idempotent; holds the bank's lock."""
    bank = Path(bank_dir).resolve()
    if not (bank / "dataset.json").is_file():
        raise ConfigError(f"{bank}: not a bank folder (no dataset.json); build it with synthesis-bank build")
    result = MaterializeResult()
    with bank_lock(bank, job="synthesis-bank materialize"):
        entries = [e for e in collect_entries(bank).values()
                   if e.get("status") == "ok" and (e.get("storage") or {}).get("mode") == "patches"]
        bases = BaseLabels(bank)
        for sub in ("imagesTr", "labelsTr"):
            (bank / sub).mkdir(exist_ok=True)
        items = entries
        if progress and len(entries) > 1:
            from tqdm import tqdm

            items = tqdm(entries, desc="materialize", unit="case", dynamic_ncols=True)
        for entry in items:
            case_id = entry["case_id"]
            if _full_verified(bank, entry):
                result.present.append(case_id)
                continue
            compose_case(bank, entry, image_path(bank, case_id), label_path(bank, case_id), bases=bases)
            result.written.append(case_id)
        write_dataset_json(bank)
    return result
