"""Hostile probes of a bank folder (issue 22 findings 1, 2, 5, 6), with real processes and real kill -9s.

Each probe runs `synthesis-bank` processes with the fake pipeline (tests/synthesis_bank/bank_fakes.py), kills
them at a chosen moment (a patched write that SIGKILLs its own process half-way) or races them against each
other, then checks what a user relies on: the loser is refused with one line naming the holder or both layouts,
a rerun finishes the bank with 0 corrupt, duplicate or missing cases, and nnU-Net's verify_dataset_integrity
accepts it. Bounded: every process has a 120 s timeout; the module took 3 min on 2 shared, busy cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ld_augment.io.atomic import is_temp_name
from synthesis_bank.manifest import case_files_problem, collect_entries

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BANK_TESTS = ROOT / "tests" / "synthesis_bank"
TIMEOUT = 120


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The bank tests' fixtures (generated CTs, recipe, fake pipeline, nnU-Net's check), shared without a conftest.
_bank_conftest = _load("ld_hostile_bank_conftest", BANK_TESTS / "conftest.py")
ct_folder, recipe_dict, write_recipe, verify = (_bank_conftest.ct_folder, _bank_conftest.recipe_dict,
                                                _bank_conftest.write_recipe, _bank_conftest.verify)

# A `synthesis-bank` process with the fake pipeline; LD_HOSTILE_KILL picks the moment it SIGKILLs itself.
WORKER = r"""
import os, signal, sys
sys.path.insert(0, {fakes!r})
import bank_fakes
import synthesis_bank.builder as builder
builder._default_pipeline = lambda: (bank_fakes.fake_preprocess, bank_fakes.fake_synthesize)
from ld_augment.io.atomic import atomic_path
point = os.environ.get("LD_HOSTILE_KILL", "")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "first-marker-write":
    import synthesis_bank.bank_folder as bank_folder

    def torn_json(path, obj, indent=2):
        with atomic_path(path) as tmp:
            tmp.write_text('{{"format": "ld-augment-bank/1", "ki')
            die()
    bank_folder.atomic_write_json = torn_json
elif point == "merge-manifest-write":
    import synthesis_bank.manifest as manifest

    def torn_text(path, text):
        with atomic_path(path) as tmp:
            tmp.write_text(text[: len(text) // 2])
            die()
    manifest.atomic_write_text = torn_text
elif point == "merge-before-dataset-json":
    import synthesis_bank.manifest as manifest
    manifest.write_dataset_json = lambda *args, **kwargs: die()
elif point.startswith("rename:"):
    nth, real, calls = int(point.split(":")[1]), os.replace, [0]

    def replace(src, dst, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            die()
        return real(src, dst, **kwargs)
    os.replace = replace
from synthesis_bank.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-c", WORKER.format(fakes=str(BANK_TESTS)), *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_FAKE", "LD_HOSTILE"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(*args), env=_env(**env), capture_output=True, timeout=TIMEOUT, text=True)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("synthesis-bank:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


class _Hanging:
    """A build that stops inside case `case_id` until released (or killed)."""

    def __init__(self, tmp_path: Path, case_id: str, *args: str) -> None:
        self.marker, self.release = tmp_path / f"hang-{case_id}", tmp_path / f"release-{case_id}"
        self.proc = subprocess.Popen(_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_env(LD_FAKE_HANG_CASE=case_id, LD_FAKE_HANG_MARKER=str(self.marker),
                                              LD_FAKE_RELEASE=str(self.release)))
        deadline = time.monotonic() + TIMEOUT
        while not self.marker.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"build exited before case {case_id}: {self.proc.communicate()[1][-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"build never reached case {case_id}")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str]:
        self.release.write_text("go")
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            self.kill()
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _cases(recipe: Path, shard: tuple[int, int] | None = None) -> list[str]:
    from synthesis_bank.plan import plan_build, select_shard
    from synthesis_bank.recipe import load_recipe

    return [item.case_id for item in select_shard(plan_build(load_recipe(recipe)), shard)]


def _assert_complete(out: Path, expected: list[str], verify) -> None:
    """Every planned case finished once, its files intact and listed; nothing else; no temp file left."""
    entries = collect_entries(out)
    ok = sorted(cid for cid, e in entries.items() if e.get("status") == "ok")
    assert ok == sorted(expected)
    assert [cid for cid in ok if case_files_problem(out, entries[cid])] == []  # 0 corrupt or missing
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in ok]  # 0 extra
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ok]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == len(ok) and sorted(dataset["dataset"]) == ok
    assert not [p.name for p in out.iterdir() if is_temp_name(p.name)]
    verify(out)


def test_concurrent_shards_of_two_layouts(recipe_dict, write_recipe, tmp_path, verify):
    """Finding 1: 0/1 running, then 0/2 and 0/3 started on the same folder."""
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    all_cases = _cases(recipe)
    first = _Hanging(tmp_path, all_cases[2], "build", "--recipe", str(recipe), "--out", str(out), "--shard", "0/1",
                     "--no-progress")
    try:
        finished = {p.name: p.read_bytes() for p in (out / "imagesTr").iterdir()}
        assert len(finished) == 2
        for other in ("0/2", "1/2", "0/3"):
            result = _run("build", "--recipe", str(recipe), "--out", str(out), "--shard", other, "--no-progress")
            line = _error_line(result)
            assert result.returncode == 2 and str(out) in line
            assert "--shard i/1" in line and f"--shard i/{other[-1]}" in line
        assert {p.name: p.read_bytes() for p in (out / "imagesTr").iterdir()} == finished
        code, err = first.finish()
    finally:
        first.kill()
    assert code == 0, err[-2000:]
    merged = _run("merge", str(out))
    assert merged.returncode == 0 and "merged 6 case(s) (6 ok, 0 failed)" in merged.stdout, merged.stderr
    _assert_complete(out, all_cases, verify)


def test_deleted_lock_files_let_nobody_in(recipe_dict, write_recipe, tmp_path, verify):
    """Finding 2 (and 5): with the lock files deleted, a second build, a shard of the same number, merge and
    `python -m synthesis_bank.prepare` are all refused; the running builds finish untouched."""
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    shard0 = _cases(recipe, (0, 2))
    first = _Hanging(tmp_path, shard0[-1], "build", "--recipe", str(recipe), "--out", str(out), "--shard", "0/2",
                     "--no-progress")
    try:
        work = out / ".work" / shard0[-1]
        assert work.is_dir()
        for lock in out.glob(".ld-augment*.lock"):
            lock.unlink()  # the probe: rm .ld-augment.lock (and every other lock file)
        same = _run("build", "--recipe", str(recipe), "--out", str(out), "--shard", "0/2", "--resume",
                    "--no-progress")
        assert same.returncode == 2 and "in use" in _error_line(same)
        for args in (["build", "--recipe", str(recipe), "--out", str(out), "--resume", "--no-progress"],
                     ["merge", str(out)]):
            result = _run(*args)
            assert result.returncode == 2 and "in use" in _error_line(result)
        prepare = subprocess.run([sys.executable, "-m", "synthesis_bank.prepare", "--bank", str(out), "--target",
                                  "501"], env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert prepare.returncode == 2 and "in use" in prepare.stderr, prepare.stderr[-2000:]
        assert work.is_dir()  # the running case's work folder was not wiped
        other = _run("build", "--recipe", str(recipe), "--out", str(out), "--shard", "1/2", "--no-progress")
        assert other.returncode == 0, other.stderr[-2000:]  # the other shard of the layout still may run
        code, err = first.finish()
    finally:
        first.kill()
    assert code == 0 and "every case would hit" not in err, err[-2000:]
    assert _run("merge", str(out)).returncode == 0
    _assert_complete(out, _cases(recipe), verify)


def test_kill_during_the_first_marker_write(recipe_dict, write_recipe, tmp_path, verify):
    """Finding 6: the torn bank.json temp file neither makes the folder foreign nor stays."""
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    killed = _run("build", "--recipe", str(recipe), "--out", str(out), "--no-progress",
                  LD_HOSTILE_KILL="first-marker-write")
    assert killed.returncode == -9
    assert [p.name for p in out.iterdir() if is_temp_name(p.name)] and not (out / "bank.json").exists()
    again = _run("build", "--recipe", str(recipe), "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_complete(out, _cases(recipe), verify)


def test_kill_before_the_first_case_then_resume(recipe_dict, write_recipe, tmp_path, verify):
    """Finding 6: a bank killed before its first case has no dataset.json (nnU-Net's check says so plainly
    instead of a bare StopIteration); --resume finishes it."""
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    first = _Hanging(tmp_path, _cases(recipe)[0], "build", "--recipe", str(recipe), "--out", str(out),
                     "--no-progress")
    first.kill()
    assert (out / "bank.json").is_file() and not (out / "dataset.json").exists()
    with pytest.raises(AssertionError, match="dataset.json"):
        verify(out)
    again = _run("build", "--recipe", str(recipe), "--out", str(out), "--no-progress", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (out / ".work").exists()
    _assert_complete(out, _cases(recipe), verify)


@pytest.mark.parametrize("point", ["merge-manifest-write", "merge-before-dataset-json"])
def test_kill_during_merge_then_merge_again(recipe_dict, write_recipe, tmp_path, verify, point):
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    for i in range(2):
        built = _run("build", "--recipe", str(recipe), "--out", str(out), "--shard", f"{i}/2", "--no-progress")
        assert built.returncode == 0, built.stderr[-2000:]
    assert _run("merge", str(out), LD_HOSTILE_KILL=point).returncode == -9
    verify(out)  # the shards' dataset.json is still whole
    again = _run("merge", str(out))
    assert again.returncode == 0 and "(6 ok, 0 failed)" in again.stdout, again.stderr[-2000:]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6
    _assert_complete(out, _cases(recipe), verify)


def test_kill_during_prepare_then_prepare_again(tmp_path):
    """Finding 6: a prepare killed while moving a case in leaves a staging folder; the next prepare (locked,
    from `python -m synthesis_bank.prepare`) removes it and prepares every case."""
    pytest.importorskip("nnunetv2")
    fixtures = _load("ld_hostile_nnunet_fixtures", ROOT / "tests" / "nnunet_trainers" / "nnunet_fixtures.py")
    name = fixtures.make_planned_target(tmp_path)
    bank = fixtures.make_bank(tmp_path / "bank", ["a", "b", "c"], shape=(12, 12, 10))
    env = {var: str(tmp_path / var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    args = ["prepare", "--bank", str(bank), "--target", name, "-np", "1", "--no-progress"]
    killed = _run(*args, LD_HOSTILE_KILL="rename:3", **env)  # prepared.json, then the first case's first file
    assert killed.returncode == -9, killed.stderr[-2000:]
    root = bank / "nnUNet_preprocessed" / name
    assert list(root.glob(".staging_*"))
    again = subprocess.run([sys.executable, "-m", "synthesis_bank.prepare", *args[1:]], env=_env(**env),
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(root.glob(".staging_*")) and not [p for p in root.iterdir() if is_temp_name(p.name)]
    record = json.loads((root / "prepared.json").read_text())["records"]["nnUNetPlans/3d_fullres"]
    assert record["cases"] == ["ld_a_v0", "ld_b_v0", "ld_c_v0"]
    data = root / record["data_identifier"]
    assert sorted(p.name for p in data.glob("*.pkl")) == ["ld_a_v0.pkl", "ld_b_v0.pkl", "ld_c_v0.pkl"]
