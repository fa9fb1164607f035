"""Issue 12 case 1: two builds into one folder. The second (or a --resume, merge, prepare) refuses while the
first runs, the first's bank stays intact and nnU-Net-valid, and a dead holder's lock is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import synthesis_bank.builder as builder
from synthesis_bank.cli import main
from synthesis_bank.lock import BankLockedError, bank_lock
from synthesis_bank.manifest import read_manifest


def _env(tmp_path: Path, hang_case: str) -> tuple[dict[str, str], Path, Path]:
    marker, release = tmp_path / "hanging", tmp_path / "release"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), LD_FAKE_HANG_CASE=hang_case, LD_FAKE_HANG_MARKER=str(marker),
               LD_FAKE_RELEASE=str(release))
    return env, marker, release


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"first build exited early: {proc.communicate()[1].decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("first build never reached the hanging case")
        time.sleep(0.05)


def test_second_build_refuses_and_first_bank_stays_valid(recipe_dict, write_recipe, tmp_path, bank_fakes, verify,
                                                         monkeypatch, capsys):
    monkeypatch.setattr(builder, "_default_pipeline", lambda: (bank_fakes.fake_preprocess, bank_fakes.fake_synthesize))
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    env, marker, release = _env(tmp_path, "case_b_syn001")
    first = subprocess.Popen(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                    "--no-progress"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marker, first)
        finished = sorted(p.name for p in (out / "imagesTr").iterdir())
        assert len(finished) == 3
        second = subprocess.run(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                       "--no-progress"),
                                env=dict(env, LD_FAKE_HANG_CASE=""), capture_output=True, timeout=120)
        err = second.stderr.decode().strip()
        assert second.returncode == 2, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert f"pid {first.pid}" in err and "in use" in err
        capsys.readouterr()
        for argv in (["build", "--recipe", str(recipe), "--out", str(out), "--no-progress", "--resume"],
                     ["merge", str(out)]):  # a resume beside the running build, a merge under it
            assert main(argv) == 2
            assert f"pid {first.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in (out / "imagesTr").iterdir()) == finished  # nothing deleted
        release.write_text("go")
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr.decode()[-2000:]
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 6 and all(e["status"] == "ok" for e in entries)
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6
    verify(out)


@pytest.mark.slow
def test_shard_builds_share_the_folder_but_not_a_shard(recipe_dict, write_recipe, tmp_path, bank_fakes):
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    from synthesis_bank.plan import plan_build, select_shard
    from synthesis_bank.recipe import load_recipe

    hang = select_shard(plan_build(load_recipe(recipe)), (0, 2))[0].case_id
    env, marker, release = _env(tmp_path, hang)
    first = subprocess.Popen(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                    "--shard", "0/2", "--no-progress"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marker, first)
        quiet = dict(env, LD_FAKE_HANG_CASE="")
        other = subprocess.run(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                      "--shard", "1/2", "--no-progress"),
                               env=quiet, capture_output=True, timeout=120)
        assert other.returncode == 0, other.stderr.decode()[-2000:]  # shards run side by side
        same = subprocess.run(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                     "--shard", "0/2", "--no-progress", "--resume"),
                              env=quiet, capture_output=True, timeout=120)
        assert same.returncode == 2 and f"pid {first.pid}" in same.stderr.decode()
        whole = subprocess.run(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out),
                                                      "--no-progress", "--resume"),
                               env=quiet, capture_output=True, timeout=120)
        assert whole.returncode == 2 and "in use" in whole.stderr.decode()
        release.write_text("go")
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0


def test_lock_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from synthesis_bank.lock import bank_lock\n"
            f"with bank_lock({str(tmp_path)!r}, job='test holder'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([os.sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(root)),
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(BankLockedError, match=rf"pid {holder.pid} \(test holder, started "):
            with bank_lock(tmp_path, job="me"):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with bank_lock(tmp_path, job="me"):  # the kernel released the dead holder's lock: no stale pid file
        pass


def test_shared_holders_exclude_an_exclusive_one(tmp_path):
    with bank_lock(tmp_path, job="shard 0", shared=True), bank_lock(tmp_path, job="shard 1", shared=True):
        with pytest.raises(BankLockedError):
            with bank_lock(tmp_path, job="merge"):
                pass


def test_prepare_and_merge_refuse_a_bank_in_use(recipe_dict, tmp_path, fakes, capsys):
    from synthesis_bank.builder import build_bank
    from synthesis_bank.recipe import Recipe

    out = tmp_path / "bank"
    build_bank(Recipe.from_dict(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    before = (out / "dataset.json").read_bytes()
    with bank_lock(out, job="synthesis-bank build"):
        assert main(["prepare", "--bank", str(out), "--target", "3"]) == 2
        assert f"pid {os.getpid()} (synthesis-bank build" in capsys.readouterr().err
        assert main(["merge", str(out)]) == 2
    assert (out / "dataset.json").read_bytes() == before
    assert main(["merge", str(out)]) == 0  # free again
