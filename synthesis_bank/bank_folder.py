"""What an output folder is before we write to it: absent, empty, or a bank we wrote (`bank.json` marker).

Anything else (someone's nnU-Net dataset, a home folder, a file) is refused before a byte is written, so a
mistyped `--out` can never overwrite a foreign dataset.json or mix our cases into another dataset. The marker
also stores the recipe's canonical hash from the first build, which is how `--resume` knows the recipe changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Mapping

from ld_augment.errors import ConfigError
from ld_augment.io.atomic import atomic_write_json

from synthesis_bank.lock import LOCK_FILE, METADATA_LOCK_FILE

MARKER = "bank.json"
MARKER_FORMAT = "ld-augment-bank/1"
BANK_KIND = "synthesis-bank"
# Names a bank job may leave in a folder before its marker exists (lock files, the work folder).
_OWN_SCRATCH = {LOCK_FILE, METADATA_LOCK_FILE, ".work"}


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
    found = sorted(p.name for p in out_dir.iterdir()
                   if p.name not in _OWN_SCRATCH and not p.name.startswith(".ld-augment."))
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
