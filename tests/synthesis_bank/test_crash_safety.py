"""Issue 12 cases 6 and 8 on real disks and real kills: the bank is a valid nnU-Net dataset at every instant a
reader can see (a crash before or after any file operation, a SIGKILL at any moment), and a full or read-only
file system ends the build with exit 2 and one line, the manifest's last line whole."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import synthesis_bank.case_runner as case_runner
import synthesis_bank.manifest as manifest_mod
from synthesis_bank.builder import build_bank
from synthesis_bank.manifest import read_manifest
from synthesis_bank.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


class _Crash(BaseException):
    """A simulated power cut: not an Exception, so no case-level handler can treat it as a failed case."""


def _recipe(data) -> Recipe:
    return Recipe.from_dict(data, base_dir=Path("/"))


def _assert_nnunet_consistent(out: Path) -> int:
    """What verify_dataset_integrity checks first, cheaply: numTraining == the cases nnU-Net finds, each with
    its image and label present and readable."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = json.loads((out / "dataset.json").read_text())
    cases = get_filenames_of_train_images_and_targets(str(out), dataset_json)
    assert len(cases) == dataset_json["numTraining"]
    import nibabel as nib

    for files in cases.values():
        for path in [*files["images"], files["label"]]:
            assert nib.load(path).get_fdata().size > 0
    return len(cases)


def _count_calls(recipe, tmp_path, fakes, monkeypatch) -> int:
    calls = {"n": 0}
    _instrument(monkeypatch, lambda: calls.__setitem__("n", calls["n"] + 1))
    build_bank(recipe, tmp_path / "count", progress=False, **fakes)
    monkeypatch.undo()
    return calls["n"]


def _instrument(monkeypatch, hook) -> None:
    """Call `hook` before every rename and every manifest write of a build (the moments state changes)."""
    real_replace, real_write = os.replace, os.write

    def replace(src, dst, *args, **kwargs):
        hook()
        return real_replace(src, dst, *args, **kwargs)

    def write(fd, data):
        hook()
        return real_write(fd, data)

    monkeypatch.setattr(case_runner.os, "replace", replace)  # the module objects are the real `os`,
    monkeypatch.setattr(manifest_mod.os, "write", write)     # so atomic writes are covered too


def test_valid_after_a_crash_at_every_step(recipe_dict, tmp_path, fakes, monkeypatch, verify):
    recipe = _recipe(dict(recipe_dict, variants_per_source=1))
    steps = _count_calls(recipe, tmp_path, fakes, monkeypatch)
    assert steps >= 10
    for crash_at in range(1, steps + 1):
        out = tmp_path / f"crash{crash_at}"
        seen = {"n": 0}

        def hook() -> None:
            seen["n"] += 1
            if seen["n"] == crash_at:
                raise _Crash

        _instrument(monkeypatch, hook)
        with pytest.raises(_Crash):
            build_bank(recipe, out, progress=False, **fakes)
        monkeypatch.undo()
        if (out / "dataset.json").exists():
            _assert_nnunet_consistent(out)
        manifest = out / "manifest.jsonl"
        assert not manifest.exists() or manifest.read_bytes().endswith(b"\n") or manifest.stat().st_size == 0
    summary = build_bank(recipe, out, resume=True, progress=False, **fakes)  # the last crash, finished
    assert summary.ok and _assert_nnunet_consistent(out) == 3
    verify(out)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(recipe_dict, write_recipe, tmp_path, bank_fakes, verify):
    """Real kills: each run is SIGKILLed at a random moment after it finished one more case (so the moment
    falls anywhere inside the next case), checked with nnU-Net's own verify_dataset_integrity, then resumed;
    the last run finishes the bank."""
    recipe, out = write_recipe(dict(recipe_dict, variants_per_source=3)), tmp_path / "bank"
    manifest = out / "manifest.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_FAKE_DELAY_S="0.5")
    rng = random.Random(12)
    kills = 0
    for attempt in range(5):
        argv = bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(out), "--no-progress",
                                      *(["--resume"] if attempt else []))
        target = len(read_manifest(manifest)) + 1
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if attempt < 4:
                deadline = time.monotonic() + 120
                while len(read_manifest(manifest)) < target and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the next case (0.5 s of work + file moves)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    kills += 1
                    assert json.loads((out / "dataset.json").read_text())["numTraining"] >= target - 1  # progress made
                    verify(out)
                    continue
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        break
    assert kills == 4
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 9
    verify(out)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                            capture_output=True)
    return result.returncode == 0


def _build_on_tmpfs(bank_fakes, recipe: Path, mount: Path, copy: Path, options: str) -> tuple[int, str]:
    """Run a build into a fresh tmpfs mounted at `mount` in a private mount namespace (nothing leaks to the
    host), then copy what it left to `copy` for inspection."""
    mount.mkdir()
    copy.mkdir()
    argv = shlex.join(bank_fakes.cli_command("build", "--recipe", str(recipe), "--out", str(mount), "--no-progress"))
    script = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mount))} || exit 99; {argv}; rc=$?; "
              f"cp -a {shlex.quote(str(mount))}/. {shlex.quote(str(copy))}/; exit $rc")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, timeout=300)
    return result.returncode, result.stderr.decode()


def test_full_disk_stops_with_one_line_and_whole_manifest(recipe_dict, write_recipe, tmp_path, bank_fakes, verify):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs `unshare -m` and tmpfs mounts (root on Linux); the simulated ENOSPC tests cover the logic")
    recipe = write_recipe(recipe_dict)
    code, err = _build_on_tmpfs(bank_fakes, recipe, tmp_path / "small", tmp_path / "left", "size=200k")
    lines = [line for line in err.splitlines() if line.startswith("synthesis-bank:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(tmp_path / "small") in lines[0]
    assert "Traceback" not in err
    left = tmp_path / "left"
    manifest = left / "manifest.jsonl"
    assert not manifest.exists() or manifest.read_bytes() == b"" or manifest.read_bytes().endswith(b"\n")
    assert len(read_manifest(manifest)) < 6  # stopped, not one failure per case
    if json.loads((left / "dataset.json").read_text())["numTraining"]:
        verify(left)


def test_read_only_disk_is_one_line_exit_two(recipe_dict, write_recipe, tmp_path, bank_fakes):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs `unshare -m` and tmpfs mounts (root on Linux)")
    code, err = _build_on_tmpfs(bank_fakes, write_recipe(recipe_dict), tmp_path / "ro", tmp_path / "left", "ro")
    lines = [line for line in err.splitlines() if line.startswith("synthesis-bank:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Read-only file system" in lines[0] and str(tmp_path / "ro") in lines[0]
    assert "Traceback" not in err
