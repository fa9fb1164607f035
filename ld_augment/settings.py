"""Settings read from the environment, always at call time (never at import time)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ld_augment.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Memory one input may take (its voxels when read, its standardization) unless LD_AUGMENT_MAX_MEMORY_GB says
#: otherwise: sized for a 24 GB machine, leaving room for the networks, TotalSegmentator and the OS.
DEFAULT_MAX_MEMORY_GB = 16.0
MAX_MEMORY_ENV = "LD_AUGMENT_MAX_MEMORY_GB"


def test_data_dir() -> Path:
    """Shared test data folder: $LD_TEST_DATA, default ../shared/data beside the repository root."""
    value = os.environ.get("LD_TEST_DATA")
    if value:
        return Path(value)
    return REPO_ROOT.parent / "shared" / "data"


def reference_dir() -> Path:
    """The reference goldens folder (data/../reference): $LD_REFERENCE_DATA, else beside test_data_dir()."""
    value = os.environ.get("LD_REFERENCE_DATA")
    if value:
        return Path(value)
    return test_data_dir().parent / "reference"


def memory_limit_bytes() -> int:
    """The per-input memory budget: $LD_AUGMENT_MAX_MEMORY_GB (read at call time) or the default."""
    raw = os.environ.get(MAX_MEMORY_ENV)
    if raw is None or not raw.strip():
        return int(DEFAULT_MAX_MEMORY_GB * 2**30)
    try:
        gb = float(raw)
    except ValueError:
        raise ConfigError(f"{MAX_MEMORY_ENV}={raw[:40]!r}: expected a number of GB (e.g. 16)") from None
    if not (math.isfinite(gb) and gb > 0):
        raise ConfigError(f"{MAX_MEMORY_ENV}={raw[:40]!r}: expected a positive number of GB")
    return int(gb * 2**30)


#: The project's own import packages: an output folder inside one of them pollutes the code itself.
PACKAGES = ("ld_augment", "synthesis_bank", "nnunet_trainers")


def source_tree_of(path: str | os.PathLike) -> tuple[str, Path] | None:
    """("package", dir) when `path` lies inside one of our packages, ("checkout", root) when inside a git work
    tree of ld-augment's own source, else None: a bank of GBs of NIfTI written there ends up in commits,
    editable installs and test collection."""
    target = Path(path).expanduser().resolve()
    for package in PACKAGES:
        folder = (REPO_ROOT / package).resolve()
        if target == folder or folder in target.parents:
            return "package", folder
    for parent in (target, *target.parents):
        if (parent / ".git").exists() and (parent / "ld_augment" / "__init__.py").is_file():
            return "checkout", parent
    return None

