"""Per-folder locks for bank jobs: `fcntl.flock` on a lock file inside the bank folder.

A kernel lock, not a pid file: the kernel releases it when the holder dies (even by kill -9), so a crash never
leaves a stale lock and `--resume` needs no clean-up. Whole-bank jobs (a build without shards, merge, prepare)
hold the folder lock exclusively; shard builds share it (shards write disjoint files and manifests) and each
holds its own shard lock exclusively, so two builds of one shard still refuse each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ld_augment.errors import LdAugmentError

LOCK_FILE = ".ld-augment.lock"
METADATA_LOCK_FILE = ".ld-augment.metadata.lock"


class BankLockedError(LdAugmentError):
    """Another process holds the bank folder (or shard) this job needs."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} ({info.get('job', 'a bank job')}, started {when})"


@contextmanager
def bank_lock(folder: str | os.PathLike, *, job: str, shared: bool = False,
              name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold `folder/name` for the duration of the block; refuse at once (no waiting) if someone else holds it.

    `shared=True` takes a shared lock (several shard builds together), which still excludes every exclusive
    holder. The lock file records the latest holder's pid, job and start time for the refusal message.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BankLockedError(f"{folder} is in use by {_holder(path)}; wait for it to finish "
                                  f"(a dead holder's lock is released automatically)") from None
        info = json.dumps({"pid": os.getpid(), "job": job, "started": time.time()}).encode()
        os.ftruncate(fd, 0)  # only for the refusal message: with shared holders the latest one is named
        os.pwrite(fd, info, 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def metadata_lock(folder: str | os.PathLike) -> Iterator[None]:
    """A short blocking lock around a read-compute-write of dataset.json or bank.json, so concurrent shards
    never publish a numTraining computed before another shard's newer one."""
    fd = os.open(Path(folder) / METADATA_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
