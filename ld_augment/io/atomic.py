"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a torn file.
Every temporary name starts with TEMP_PREFIX, so a kill -9 mid-write leaves a file the next run recognises as
ours (`is_temp_name`) and removes, never one mistaken for a user's file.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: Prefix of every temporary file these helpers create (`.ld-tmp-<target name>.<random><suffix>`).
TEMP_PREFIX = ".ld-tmp-"


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary file written by `atomic_path` (left behind only by a killed writer)."""
    return name.startswith(TEMP_PREFIX)


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode open() would give a new file (mkstemp gives 0600)."""
    try:  # Linux reports it without changing it (the os.umask round trip below is not thread-safe)
        with open("/proc/self/status", encoding="ascii") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    The temporary name keeps the final suffix (e.g. `.nii.gz`) so libraries that pick a format from the
    file name (nibabel, PIL) write the right one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, default_file_mode())  # a finished output follows the umask like open() would
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # a write through a file object (gzip, json, a full disk) says "[Errno 28]" and no file: name the target
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save_nifti(img: Any, path: str | os.PathLike) -> Path:
    """Save a nibabel image atomically (nibabel picks compression from the `.nii.gz` suffix)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def atomic_save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), dpi=dpi, format="png", bbox_inches="tight")
    return Path(path)
