"""A build process killed with SIGKILL mid-case leaves a valid manifest, and --resume finishes the bank."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthesis_bank.builder import build_bank
from synthesis_bank.manifest import read_manifest
from synthesis_bank.recipe import load_recipe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

WORKER = """
import sys
sys.path.insert(0, {here!r})
from bank_fakes import FAKES
from synthesis_bank.builder import build_bank
build_bank({recipe!r}, {out!r}, progress=False, **FAKES)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_mid_case_then_resume(recipe_dict, write_recipe, tmp_path, fakes):
    recipe_path = write_recipe(recipe_dict)
    out = tmp_path / "bank"
    marker = tmp_path / "hanging"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_FAKE_HANG_CASE="case_b_syn001", LD_FAKE_HANG_MARKER=str(marker))
    code = WORKER.format(here=str(HERE), recipe=str(recipe_path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.communicate()[1].decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("worker never reached the hanging case")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-case: preprocessing of case_b_syn001 done, synthesis in progress
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    manifest = out / "manifest.jsonl"
    assert manifest.read_bytes().endswith(b"\n")
    first = read_manifest(manifest)
    assert [e["case_id"] for e in first] == ["case_a_syn000", "case_a_syn001", "case_b_syn000"]
    assert (out / ".work" / "case_b_syn001").is_dir()  # the killed case's scratch folder is left behind
    assert not (out / "imagesTr" / "case_b_syn001_0000.nii.gz").exists()
    before = {e["case_id"]: (_stat(out, e["case_id"])) for e in first}

    summary = build_bank(load_recipe(recipe_path), out, resume=True, progress=False, **fakes)
    assert summary.ok
    assert sorted(summary.resumed) == sorted(before)
    assert sorted(summary.done) == ["case_b_syn001", "case_c_syn000", "case_c_syn001"]
    for case_id, stat in before.items():
        assert _stat(out, case_id) == stat  # finished cases untouched (mtime and content)
    ids = [e["case_id"] for e in read_manifest(manifest)]
    assert len(ids) == len(set(ids)) == 6
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6
    assert not (out / ".work").exists()


def _stat(out: Path, case_id: str) -> tuple:
    image = out / "imagesTr" / f"{case_id}_0000.nii.gz"
    label = out / "labelsTr" / f"{case_id}.nii.gz"
    return (image.stat().st_mtime_ns, hashlib.sha256(image.read_bytes()).hexdigest(),
            label.stat().st_mtime_ns, hashlib.sha256(label.read_bytes()).hexdigest())
