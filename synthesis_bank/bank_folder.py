"""What an output folder is before we write to it: absent, empty, or a bank we wrote (`bank.json` marker).

Anything else (someone's nnU-Net dataset, a home folder, a file) is refused before a byte is written, so a
mistyped `--out` can never overwrite a foreign dataset.json or mix our cases into another dataset. The marker
also stores the recipe's canonical hash from the first build, which is how `--resume` knows the recipe changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from ld_augment.errors import ConfigError
from ld_augment.io.atomic import atomic_write_json, is_temp_name

from synthesis_bank.lock import LOCK_FILE, METADATA_LOCK_FILE

MARKER = "bank.json"
MARKER_FORMAT = "ld-augment-bank/1"
BANK_KIND = "synthesis-bank"
WORK_DIR = ".work"
# Names a bank job may leave in a folder before its marker exists (lock files, the work folder).
_OWN_SCRATCH = {LOCK_FILE, METADATA_LOCK_FILE, WORK_DIR}
# Temporary names of the bank's own files written before atomic writes used TEMP_PREFIX (mkstemp's 8 chars).
_LEGACY_TEMP = re.compile(r"^\.(bank\.json|dataset\.json|manifest(\.shard-\d+-of-\d+)?\.jsonl|prepared\.json)"
                          r"\.[a-z0-9_]{8}\.jsonl?$")


def is_own_scratch(name: str) -> bool:
    """A name only a bank job (or its killed writer) leaves: locks, the work folder, atomic-write temp files."""
    return (name in _OWN_SCRATCH or name.startswith(".ld-augment.") or is_temp_name(name)
            or _LEGACY_TEMP.match(name) is not None)


def clean_scratch(folder: Path) -> list[str]:
    """Remove the temp files killed writers left directly in `folder` (names removed). Call it only while no
    other job can be writing there: holding the folder lock exclusively, or (shards) the metadata lock."""
    removed = []
    try:
        names = [p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    except OSError:
        return removed
    for name in names:
        if is_temp_name(name) or _LEGACY_TEMP.match(name):
            (folder / name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def clean_work(folder: Path) -> None:
    """Remove the whole work folder (only under the exclusive folder lock: shards keep each other's)."""
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)


def read_marker(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable bank marker ({exc}); is this folder a bank written by ld-augment?") from None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        raise ConfigError(f"{path}: not an ld-augment bank marker (format {data.get('format') if isinstance(data, dict) else None!r})")
    return data


def _legacy_provenance(out_dir: Path) -> dict[str, Any] | None:
    """The provenance block of a bank built before the marker existed (its dataset.json), else None."""
    try:
        data = json.loads((out_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    block = data.get("ld_augment") if isinstance(data, dict) else None
    return block if isinstance(block, dict) and block.get("kind") == BANK_KIND else None


def _legacy_bank(out_dir: Path) -> bool:
    return _legacy_provenance(out_dir) is not None


def marker_or_legacy(out_dir: Path) -> dict[str, Any] | None:
    """The bank marker; for an older bank without one, a stand-in built from the recipe its dataset.json
    recorded (so a resume of an old bank is still checked against its recipe), flagged "legacy"."""
    marker = read_marker(out_dir)
    if marker is not None:
        return marker
    block = _legacy_provenance(out_dir)
    if block is None or not isinstance(block.get("recipe"), Mapping):
        return None
    stand_in = new_marker(block["recipe"], allow_pickle=False)
    stand_in["legacy"] = True
    return stand_in


def check_out_dir(out_dir: Path, *, role: str = "--out") -> bool:
    """True if `out_dir` is one of our banks, False if it is absent or empty; ConfigError for anything else.
    `role` names the folder in messages (the option or command it came from)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{role} {out_dir} is a file, not a folder; give a new or empty folder")
    if not out_dir.exists():
        return False
    if read_marker(out_dir) is not None or _legacy_bank(out_dir):
        return True
    found = sorted(p.name for p in out_dir.iterdir() if not is_own_scratch(p.name))
    if not found:
        return False
    what = "an nnU-Net raw dataset not written by ld-augment" if (out_dir / "dataset.json").is_file() else "other files"
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    hint = "; a bank needs a new or empty folder (or one of its own banks, with --resume)" if role == "--out" else ""
    raise ConfigError(f"{role} {out_dir} holds {what} ({shown}), not a bank written by synthesis-bank build{hint}")


def canonical_recipe(recipe_dict: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(the recipe as stored, its sha256 over sorted-key JSON): equal recipes hash equal wherever they load."""
    data = json.loads(json.dumps(recipe_dict, sort_keys=True, default=str))
    return data, hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (nested mappings compared key by key)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def new_marker(recipe_dict: Mapping[str, Any], *, allow_pickle: bool) -> dict[str, Any]:
    data, digest = canonical_recipe(recipe_dict)
    return {"format": MARKER_FORMAT, "kind": BANK_KIND, "created": time.time(), "recipe_sha256": digest,
            "recipe": data, "allow_pickle": bool(allow_pickle), "history": []}


def settle_recipe(out_dir: Path, marker: dict[str, Any] | None, recipe_dict: Mapping[str, Any], *,
                  force: bool, allow_pickle: bool) -> dict[str, Any]:
    """Write the marker on the first build; on later runs refuse a changed recipe unless `force` (recorded)."""
    if marker is None:
        marker = new_marker(recipe_dict, allow_pickle=allow_pickle)
        atomic_write_json(out_dir / MARKER, marker)
        return marker
    data, digest = canonical_recipe(recipe_dict)
    events = []
    if digest != marker.get("recipe_sha256"):
        changed = changed_keys(marker.get("recipe") or {}, data)
        if not force:
            raise ConfigError(f"{out_dir}: the recipe changed since this bank was first built (changed: "
                              f"{', '.join(changed) or 'unknown'}); use a new output folder, or pass "
                              "--force-recipe-change to continue with the new recipe (recorded in bank.json)")
        events.append({"event": "recipe_change", "at": time.time(), "changed": changed,
                       "old_sha256": marker.get("recipe_sha256"), "new_sha256": digest})
        marker.update(recipe_sha256=digest, recipe=data)
    if allow_pickle and not marker.get("allow_pickle"):
        events.append({"event": "allow_pickle", "at": time.time()})
        marker["allow_pickle"] = True
    if marker.pop("legacy", False):
        events.append({"event": "marker_added", "at": time.time()})
    if events:
        marker["history"] = list(marker.get("history") or []) + events
        atomic_write_json(out_dir / MARKER, marker)
    return marker


def describe_layout(shards: int | None) -> str:
    return "no --shard (one manifest.jsonl)" if shards is None else f"--shard i/{shards} ({shards} shard(s))"


def _layouts_on_disk(out_dir: Path) -> set[int | None]:
    """Shard counts of the manifests present (None: only an unsharded manifest.jsonl)."""
    found: set[int | None] = set()
    for path in out_dir.glob("manifest.shard-*-of-*.jsonl"):
        match = re.match(r"^manifest\.shard-\d+-of-(\d+)\.jsonl$", path.name)
        if match:
            found.add(int(match.group(1)))
    if not found and (out_dir / "manifest.jsonl").is_file():
        found.add(None)
    return found


def check_layout(out_dir: Path, marker: Mapping[str, Any] | None, shards: int | None) -> int | None:
    """The bank's shard layout (recorded in bank.json, else read off its manifests, else `shards` for a new
    bank); ConfigError naming both layouts if `shards` differs. Call it under the metadata lock."""
    layout = (marker or {}).get("layout")
    if isinstance(layout, Mapping) and "shards" in layout:
        have = layout["shards"]
    else:
        found = _layouts_on_disk(out_dir)
        if len(found) > 1:
            shown = ", ".join(describe_layout(n) for n in sorted(found, key=lambda n: n or 0))
            raise ConfigError(f"{out_dir} holds manifests of several shard layouts ({shown}); their shards split "
                              "the cases differently and overwrite each other's files: keep one layout's "
                              "manifests, or use a new output folder")
        have = found.pop() if found else shards
    if have != shards:
        raise ConfigError(f"{out_dir} is built with {describe_layout(have)}, this build asks for "
                          f"{describe_layout(shards)}: different layouts give the same cases to different "
                          f"processes, which overwrite and delete each other's finished files; build it with "
                          f"{describe_layout(have)} again, or use a new output folder")
    return have


def settle_layout(out_dir: Path, marker: dict[str, Any], shards: int | None) -> dict[str, Any]:
    """Check the layout and record it in bank.json the first time (under the metadata lock, so of two builds
    racing with different layouts exactly one wins)."""
    have = check_layout(out_dir, marker, shards)
    if (marker.get("layout") or {}).get("shards", "unset") != have:
        marker["layout"] = {"shards": have}
        atomic_write_json(out_dir / MARKER, marker)
    return marker
