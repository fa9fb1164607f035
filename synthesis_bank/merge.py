"""`merge_bank`: join a bank's shard manifests into manifest.jsonl and dataset.json, honestly.

Merge never reports cases nnU-Net will not see: every case the manifests call "ok" must have its image and
label present and matching its manifest line, and dataset.json must then list exactly those cases; otherwise it
refuses (nothing rewritten) naming the cases, so a lost file is rebuilt by `build --resume` instead of hiding
behind a "merged N case(s)" that dataset.json contradicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ld_augment.errors import ConfigError

from synthesis_bank.bank_folder import check_out_dir, clean_scratch
from synthesis_bank.lock import bank_lock
from synthesis_bank.manifest import DATASET_JSON, case_files_problem, collect_entries, merge_manifests


@dataclass(frozen=True)
class MergeResult:
    manifest: Path
    cases: int      # one line per case in the merged manifest
    ok: int         # of them "ok" (with verified files)
    failed: int
    listed: int     # cases dataset.json lists (== ok, or merge refuses)


def _require_bank(folder: Path) -> None:
    if not check_out_dir(folder, role="merge"):
        raise ConfigError(f"{folder}: not a bank folder written by synthesis-bank build")


def merge_bank(folder: str | Path) -> MergeResult:
    """Merge under the exclusive folder lock; ConfigError (nothing written) when the counts would disagree."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a bank folder written by synthesis-bank build")
    with bank_lock(folder, job="synthesis-bank merge", check=lambda: _require_bank(folder)):
        clean_scratch(folder)
        entries = collect_entries(folder)
        ok = sorted(cid for cid, e in entries.items() if e.get("status") == "ok")
        problems = {cid: why for cid in ok if (why := case_files_problem(folder, entries[cid]))}
        if problems:
            shown = "; ".join(f"{cid}: {why}" for cid, why in list(problems.items())[:5])
            more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ConfigError(f"{folder}: {len(problems)} of the {len(ok)} case(s) its manifests list as ok have "
                              f"missing or changed files ({shown}{more}); nothing merged. Rebuild them with "
                              "`synthesis-bank build --resume` (with the bank's --shard), then merge again")
        path = merge_manifests(folder)
        target = folder / DATASET_JSON
        listed = json.loads(target.read_text(encoding="utf-8"))["numTraining"] if target.is_file() else 0
        if listed != len(ok):  # cannot happen after the check above unless files vanish meanwhile: say so
            raise ConfigError(f"{target} lists {listed} case(s) but {path} has {len(ok)} ok case(s); "
                              "files changed during the merge, run it again")
    return MergeResult(path, len(entries), len(ok), len(entries) - len(ok), listed)
