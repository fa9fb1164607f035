"""An older revision of the package, importable by a subprocess: the same-run baseline of the realism benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_with_revision(ref: str, argv: list[str]) -> None:
    """Run ``argv`` with ``ld_augment`` as of git revision ``ref`` first on PYTHONPATH (``git archive`` into a
    temporary folder, removed afterwards); raises CalledProcessError when the command fails."""
    tmp = Path(tempfile.mkdtemp(prefix="ld_bench_ref_"))
    try:
        archive = tmp / "src.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref, "ld_augment"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(tmp)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
