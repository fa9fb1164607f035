"""Settings read from the environment, always at call time (never at import time)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


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
