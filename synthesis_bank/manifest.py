"""The bank manifest (JSON lines, one per finished or failed case) and the dataset.json derived from it.

Each shard process is the only writer of its own manifest file (synthesis_bank.lock enforces it); a line is
written with one `write()` on an O_APPEND descriptor and fsynced, and only after the case's files are in place.
A failed write (disk full) is cut back at once, and a kill leaves at most one torn final line, which readers
ignore and the next writer truncates away.

dataset.json lists its cases explicitly (nnU-Net's "dataset" key) and is rewritten after each manifest line, so
files moved into imagesTr/labelsTr before their line is written are invisible to nnU-Net: numTraining and the
listed files agree at every instant, even between a kill and `--resume`. Until the first case is finished there
is no dataset.json at all: nnU-Net cannot check (or train on) a dataset of 0 cases.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.atomic import atomic_write_json, atomic_write_text
from ld_augment.io.nifti import sha256_file

from synthesis_bank.lock import metadata_lock

MANIFEST = "manifest.jsonl"
DATASET_JSON = "dataset.json"
FILE_ENDING = ".nii.gz"
_SHARD_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
# Fields that identify what a case is; two "ok" lines for one case_id that differ here are a real conflict.
IDENTITY_KEYS = ("source_id", "source_sha256", "seed", "engine", "checkpoints")


def manifest_name(shard: tuple[int, int] | None) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


def image_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"


def label_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / "labelsTr" / f"{case_id}{FILE_ENDING}"


def case_files_exist(out_dir: Path, case_id: str) -> bool:
    return image_path(out_dir, case_id).is_file() and label_path(out_dir, case_id).is_file()


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a finished file, stored in its manifest line so `--resume` can verify it."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def case_files_problem(out_dir: Path, entry: dict[str, Any]) -> str | None:
    """Why the case's finished files cannot be trusted ("image missing", "label changed (size/sha256 differ
    from its manifest line)"), or None when both exist and match the sizes and hashes the line recorded.
    A `storage: patches` case is its patch file and its source's base label (the source itself is checked
    when the case is composed)."""
    storage = entry.get("storage") or {}
    if storage.get("mode") == "patches":
        patch = Path(out_dir) / storage.get("patch", "")
        if not patch.is_file():
            return "patch missing"
        if sha256_file(patch) != storage.get("patch_sha256"):
            return "patch changed (sha256 differs from its manifest line)"
        if not (Path(out_dir) / "bases" / storage.get("base_label", "")).is_file():
            return "base label missing"
        return None
    recorded = entry.get("files") or {}
    for role, path in (("image", image_path(out_dir, entry["case_id"])), ("label", label_path(out_dir, entry["case_id"]))):
        if not path.is_file():
            return f"{role} missing"
        rec = recorded.get(role)
        if rec is None:
            continue  # a line written before files were recorded: existence is all we can check
        if path.stat().st_size != rec.get("size") or sha256_file(path) != rec.get("sha256"):
            return f"{role} changed (size/sha256 differ from its manifest line)"
    return None


def case_files_verified(out_dir: Path, entry: dict[str, Any]) -> bool:
    """Both files exist and, when the line recorded them, match its size and sha256 (a truncated or replaced
    file is redone by --resume instead of being trusted)."""
    return case_files_problem(out_dir, entry) is None


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a manifest. An unterminated or unparseable LAST line (a write torn by a kill) is
    ignored; a bad line before the end is real corruption and raises InputError naming the line."""
    path = Path(path)
    if not path.is_file():
        return []
    return _parse(path.read_bytes(), path)[0]


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """(entries, length of the valid prefix of `data`)."""
    entries: list[dict[str, Any]] = []
    pos = 0
    lineno = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # torn final line
        lineno += 1
        raw = data[pos:end]
        if raw.strip():
            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict) or "case_id" not in entry:
                    raise ValueError("not an object with a case_id")
            except ValueError as exc:
                if end + 1 >= len(data) or not data[end + 1:].strip():
                    break  # a garbled last line (e.g. zero-filled after a crash) counts as torn
                raise InputError(f"{path}:{lineno}: corrupt manifest line ({exc})") from None
            entries.append(entry)
        pos = end + 1
    return entries, pos


def latest_by_case(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """case_id -> its last line (a resumed run appends a newer line for a case it redid)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        out[entry["case_id"]] = entry
    return out


class ManifestWriter:
    """Appends one fsynced line per case to a manifest that only this process writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies

    def _repair(self) -> None:
        """Cut a torn final line so the next append starts on a fresh line (never a glued, corrupt one)."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        keep = _parse(data, self.path)[1]
        if keep < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, entry: dict[str, Any]) -> None:
        """One whole line or nothing: a failed or short write (disk full) is truncated away before raising."""
        line = (json.dumps(entry, sort_keys=False, default=_jsonable) + "\n").encode("utf-8")
        start = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # regular files write fully unless the disk is full
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)", str(self.path))
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            if exc.filename is None:
                exc.filename = str(self.path)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def manifest_files(out_dir: str | Path) -> list[Path]:
    """manifest.jsonl (if any) then the shard manifests in (n, i) order."""
    out_dir = Path(out_dir)
    shards = []
    for path in out_dir.glob("manifest.shard-*-of-*.jsonl"):
        match = _SHARD_RE.match(path.name)
        if match:
            shards.append(((int(match.group(2)), int(match.group(1))), path))
    main = [out_dir / MANIFEST] if (out_dir / MANIFEST).is_file() else []
    return main + [p for _, p in sorted(shards)]


def collect_entries(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """One entry per case over every manifest in `out_dir`: "ok" beats "failed"; two different "ok" entries for
    one case (same id, different source/seed/engine) raise ConfigError, since the files could be either."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for path in manifest_files(out_dir):
        for case_id, entry in latest_by_case(read_manifest(path)).items():
            old = merged.get(case_id)
            if old is None or (old.get("status") != "ok" and entry.get("status") == "ok"):
                merged[case_id], origin[case_id] = entry, path
            elif old.get("status") == "ok" and entry.get("status") == "ok":
                diff = [k for k in IDENTITY_KEYS if old.get(k) != entry.get(k)]
                if diff:
                    raise ConfigError(
                        f"case {case_id} is 'ok' in both {origin[case_id]} and {path} but differs in {diff}; "
                        "remove one of the runs' outputs before merging"
                    )
    return merged


def merge_manifests(out_dir: str | Path) -> Path:
    """Join manifest.jsonl and all manifest.shard-*-of-*.jsonl into manifest.jsonl (one line per case, deduped)
    and rewrite dataset.json. The shard files are kept, so merging again is harmless. Unlocked and unchecked:
    users go through `synthesis_bank.merge.merge_bank`."""
    out_dir = Path(out_dir)
    if not manifest_files(out_dir):
        raise ConfigError(f"{out_dir}: no manifest.jsonl or manifest.shard-*-of-*.jsonl to merge")
    merged = collect_entries(out_dir)
    text = "".join(json.dumps(e, default=_jsonable) + "\n" for e in sorted(merged.values(), key=lambda e: e["case_id"]))
    atomic_write_text(out_dir / MANIFEST, text)
    write_dataset_json(out_dir)
    return out_dir / MANIFEST


def write_dataset_json(out_dir: str | Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """(Re)write dataset.json atomically with numTraining = the "ok" cases whose image and label exist; with no
    such case (and no finished patch case) there is no dataset.json (nnU-Net's verify_dataset_integrity fails on
    an empty one).

    `base` carries labels/name/description/provenance (the builder passes them); without it the existing
    dataset.json supplies them (merge)."""
    out_dir = Path(out_dir)
    target = out_dir / DATASET_JSON
    with metadata_lock(out_dir):  # concurrent shards: the last writer saw every earlier shard's line
        entries = collect_entries(out_dir)
        ok = sorted(cid for cid, e in entries.items() if e.get("status") == "ok" and case_files_exist(out_dir, cid))
        failed = sorted(cid for cid, e in entries.items() if e.get("status") != "ok")
        # a `storage: patches` bank's cases become files only when materialized; its dataset.json (labels for
        # prepare) exists from its first finished case and lists the cases materialized so far
        patches = any(e.get("status") == "ok" and (e.get("storage") or {}).get("mode") == "patches"
                      for e in entries.values())
        if not ok and not patches:  # nnU-Net cannot check or train a dataset of 0 cases: none until the first one
            target.unlink(missing_ok=True)
            return {"numTraining": 0, "dataset": {}}
        if base is None:
            if not target.is_file():
                raise ConfigError(f"{target}: missing although {len(ok)} case(s) are finished; run "
                                  "`synthesis-bank build --resume` (with the bank's --shard) to write it again")
            base = json.loads(target.read_text(encoding="utf-8"))
        dataset = dict(base)
        dataset.update({"channel_names": {"0": "CT"}, "numTraining": len(ok), "file_ending": FILE_ENDING})
        # Explicit list (paths relative to the dataset folder): files of unfinished cases are not part of it.
        dataset["dataset"] = {cid: {"images": [f"imagesTr/{cid}_0000{FILE_ENDING}"], "label": f"labelsTr/{cid}{FILE_ENDING}"}
                              for cid in ok}
        provenance = dict(dataset.get("ld_augment") or {})
        provenance.update({"num_failed": len(failed), "manifest": MANIFEST})
        dataset["ld_augment"] = provenance
        atomic_write_json(out_dir / DATASET_JSON, dataset)
    return dataset
