"""Reading a user's small text file (recipe, list file, JSON config) with a size bound.

A mistyped path can name a multi-GB file (a CT, a log); reading it whole to find out it is not a recipe would
take that much memory. The size is checked with stat() first, and errors never echo the file's bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ld_augment.errors import ConfigError, LdAugmentError

#: A recipe, options or config file is a few KB; a list file of 100 000 cases about 10 MB.
MAX_CONFIG_BYTES = 1 << 20
MAX_LIST_BYTES = 32 << 20


def read_text_bounded(path: str | os.PathLike, *, what: str, limit: int = MAX_CONFIG_BYTES,
                      error: type[LdAugmentError] = ConfigError) -> str:
    """The UTF-8 text of `path`, refusing (as `error`, naming the file) a missing, oversized or binary file."""
    raw = read_bytes_bounded(path, what=what, limit=limit, error=error)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # never echo the bytes: a wrong path may point at a private file
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def read_bytes_bounded(path: str | os.PathLike, *, what: str, limit: int = MAX_CONFIG_BYTES,
                       error: type[LdAugmentError] = ConfigError) -> bytes:
    """The bytes of `path` when it is a file of at most `limit` bytes (else `error` naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} not found" + (" (it is a folder)" if p.is_dir() else ""))
    size = p.stat().st_size
    if size > limit:
        raise error(f"{what} {p} is {size / 2**20:.1f} MB; a {what} is at most {limit / 2**20:g} MB "
                    "(is this the right file?)")
    with open(p, "rb") as fh:
        raw = fh.read(limit + 1)  # the file may grow between stat() and read()
    if len(raw) > limit:
        raise error(f"{what} {p} is over {limit / 2**20:g} MB (is this the right file?)")
    return raw
