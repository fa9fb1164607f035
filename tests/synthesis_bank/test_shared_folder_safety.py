"""Issue 22 findings 1, 2, 5 and 6, fast: one shard layout per folder, an honest merge, a lock that deleting a
file cannot steal, every entry point locked, temp files of killed writers recognised and cleaned, and no
dataset.json before the first finished case. (Real kills and concurrent processes: tests/hostile/.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.builder import _remove_case_files, build_bank
from synthesis_bank.cli import main
from synthesis_bank.lock import LOCK_FILE, BankLockedError, bank_lock, shard_lock
from synthesis_bank.manifest import image_path, label_path, read_manifest
from synthesis_bank.plan import plan_build, select_shard
from synthesis_bank.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def _recipe(data) -> Recipe:
    return Recipe.from_dict(data, base_dir=Path("/"))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for sub in ("imagesTr", "labelsTr") for p in sorted((out / sub).glob("*"))}


# --- finding 1: shard layouts, merge honesty -------------------------------------------------------------------

def test_a_second_shard_layout_is_refused_while_the_first_runs(recipe_dict, tmp_path, bank_fakes):
    """The probe: --shard 0/1 and --shard 0/2 on one folder at once worked on the same case ids."""
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    refused: list[str] = []

    def synthesize(case_dir, out_dir, **kwargs):
        if not refused:  # in the middle of 0/1's first case, 0/2 starts on the same folder
            with pytest.raises(ConfigError) as err:
                build_bank(recipe, out, shard=(0, 2), progress=False, **dict(bank_fakes.FAKES))
            refused.append(str(err.value))
        return bank_fakes.fake_synthesize(case_dir, out_dir, **kwargs)

    summary = build_bank(recipe, out, shard=(0, 1), progress=False, preprocess_fn=bank_fakes.fake_preprocess,
                         synthesize_fn=synthesize)
    assert summary.ok and len(summary.done) == 6
    assert str(out) in refused[0] and "--shard i/1" in refused[0] and "--shard i/2" in refused[0]
    assert not (out / "manifest.shard-0-of-2.jsonl").exists()
    assert json.loads((out / "bank.json").read_text())["layout"] == {"shards": 1}


def test_layouts_are_refused_after_the_fact_too(recipe_dict, tmp_path, fakes):
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    build_bank(recipe, out, shard=(0, 2), progress=False, **fakes)
    before = _files(out)
    for shard in [(0, 3), None]:
        with pytest.raises(ConfigError, match=r"is built with --shard i/2 .*asks for"):
            build_bank(recipe, out, shard=shard, resume=True, progress=False, **fakes)
    assert _files(out) == before
    assert build_bank(recipe, out, shard=(1, 2), progress=False, **fakes).ok  # the same layout goes on


def test_layout_of_an_older_bank_is_read_off_its_manifests(recipe_dict, tmp_path, fakes):
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    build_bank(recipe, out, shard=(0, 2), progress=False, **fakes)
    marker = json.loads((out / "bank.json").read_text())
    del marker["layout"]  # a bank from before the layout was recorded
    (out / "bank.json").write_text(json.dumps(marker))
    with pytest.raises(ConfigError, match=r"--shard i/2"):
        build_bank(recipe, out, shard=(0, 3), resume=True, progress=False, **fakes)
    (out / "manifest.shard-0-of-3.jsonl").write_text("")  # the folder the probe left behind
    with pytest.raises(ConfigError, match=r"several shard layouts"):
        build_bank(recipe, out, shard=(1, 2), progress=False, **fakes)


def test_a_failed_case_keeps_files_another_manifest_finished(recipe_dict, tmp_path, fakes):
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    build_bank(recipe, out, shard=(0, 2), progress=False, **fakes)
    case = select_shard(plan_build(recipe), (0, 2))[0].case_id
    own = out / "manifest.shard-0-of-2.jsonl"
    _remove_case_files(out, case, out / "manifest.shard-0-of-3.jsonl")  # another layout's shard fails it
    assert image_path(out, case).is_file() and label_path(out, case).is_file()
    _remove_case_files(out, case, own)  # its own shard's failed redo removes its leftovers
    assert not image_path(out, case).exists()


def test_merge_refuses_to_report_cases_dataset_json_does_not_list(recipe_dict, write_recipe, tmp_path, capsys,
                                                                  fakes):
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    for i in range(2):
        build_bank(recipe, out, shard=(i, 2), progress=False, **fakes)
    lost = select_shard(plan_build(recipe), (1, 2))[0].case_id
    label_path(out, lost).unlink()  # what the losing shard's failed case did to the winner's finished case
    before = (out / "dataset.json").read_bytes()
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{lost}: label missing" in err and "nothing merged" in err
    assert not (out / "manifest.jsonl").exists() and (out / "dataset.json").read_bytes() == before
    assert build_bank(recipe, out, shard=(1, 2), resume=True, progress=False, **fakes).done == [lost]
    assert main(["merge", str(out)]) == 0
    assert "merged 6 case(s) (6 ok, 0 failed)" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6


# --- finding 2: a lock deleting a file cannot steal ------------------------------------------------------------

def _holder(tmp_path: Path, code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_deleting_the_lock_file_does_not_let_a_second_build_in(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    out.mkdir()
    holder = _holder(tmp_path, "import time; from synthesis_bank.lock import bank_lock\n"
                               f"with bank_lock({str(out)!r}, job='the first build'):\n"
                               "    print('held', flush=True); time.sleep(600)\n")
    try:
        with pytest.raises(BankLockedError, match=rf"pid {holder.pid} \(the first build"):
            build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
        (out / LOCK_FILE).unlink()  # the probe: rm .ld-augment.lock
        with pytest.raises(BankLockedError, match="in use"):
            build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
        assert not (out / "bank.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert build_bank(_recipe(recipe_dict), out, progress=False, **fakes).ok  # died: released


def test_deleting_a_shard_lock_file_does_not_let_the_same_shard_in(tmp_path):
    holder = _holder(tmp_path, "import time; from synthesis_bank.lock import bank_lock, shard_lock\n"
                               f"with bank_lock({str(tmp_path)!r}, job='s', shared=True), "
                               f"shard_lock({str(tmp_path)!r}, 'manifest.shard-0-of-2', job='shard 0'):\n"
                               "    print('held', flush=True); time.sleep(600)\n")
    try:
        with bank_lock(tmp_path, job="me", shared=True):
            with pytest.raises(BankLockedError, match=rf"pid {holder.pid} \(shard 0"):
                with shard_lock(tmp_path, "manifest.shard-0-of-2", job="me"):
                    pass
            (tmp_path / ".ld-augment.manifest.shard-0-of-2.lock").unlink()
            with pytest.raises(BankLockedError, match="was deleted while it held it"):
                with shard_lock(tmp_path, "manifest.shard-0-of-2", job="me"):
                    pass
            with shard_lock(tmp_path, "manifest.shard-1-of-2", job="me"):  # other shards are free
                pass
    finally:
        holder.kill()
        holder.wait()
    with shard_lock(tmp_path, "manifest.shard-0-of-2", job="me"):
        pass


def test_a_recorded_holder_is_checked_by_pid_and_start_time(tmp_path):
    with bank_lock(tmp_path, job="me"):
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "start_ticks": 1, "job": "old"}))
        with pytest.raises(BankLockedError, match=rf"the last recorded holder, pid {os.getpid()}, has exited"):
            with bank_lock(tmp_path, job="second"):
                pass


# --- finding 5: every entry point locks ------------------------------------------------------------------------

def test_python_m_prepare_takes_the_lock(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    with bank_lock(out, job="synthesis-bank build"):
        with pytest.raises(BankLockedError, match=rf"pid {os.getpid()}"):
            from synthesis_bank.prepare import prepare_bank

            prepare_bank(out, 3)
        result = subprocess.run([sys.executable, "-m", "synthesis_bank.prepare", "--bank", str(out), "--target", "3"],
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=120)
    assert result.returncode == 2
    assert f"in use by pid {os.getpid()} (synthesis-bank build" in result.stderr.decode()


# --- finding 6: temp files, a half-written first marker, empty banks -------------------------------------------

@pytest.mark.parametrize("temp", [".ld-tmp-bank.json.k2j4h5g6.json", ".bank.json.k2j4h5g6.json"])
def test_a_kill_during_the_first_marker_write_does_not_make_the_folder_foreign(recipe_dict, tmp_path, fakes, temp):
    out = tmp_path / "bank"
    out.mkdir()
    for name in (LOCK_FILE, ".ld-augment.metadata.lock"):
        (out / name).write_text("")
    (out / temp).write_text('{"format": "ld-augment-bank/1", "ki')  # what the kill left
    assert build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes).ok
    assert not (out / temp).exists()


def test_the_loser_of_a_race_for_a_new_folder_hears_in_use(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    out.mkdir()
    with bank_lock(out, job="synthesis-bank build"):
        (out / ".ld-tmp-bank.json.abcdefgh.json").write_text("{")  # the winner is writing its marker
        with pytest.raises(BankLockedError, match=rf"in use by pid {os.getpid()} \(synthesis-bank build"):
            build_bank(_recipe(recipe_dict), out, progress=False, **fakes)


def test_leftover_temp_files_are_cleaned_by_the_next_run(recipe_dict, tmp_path, fakes):
    out, recipe = tmp_path / "bank", _recipe(dict(recipe_dict, variants_per_source=1))
    build_bank(recipe, out, progress=False, **fakes)
    left = [".dataset.json.a1b2c3d4.json", ".manifest.jsonl.a1b2c3d4.jsonl", ".ld-tmp-dataset.json.x.json"]
    for name in left:
        (out / name).write_text("{")
    (out / "notes.txt").write_text("mine")  # not ours: kept
    assert build_bank(recipe, out, resume=True, progress=False, **fakes).ok
    assert not any((out / name).exists() for name in left) and (out / "notes.txt").read_text() == "mine"
    (out / ".ld-tmp-manifest.jsonl.y.jsonl").write_text("{")
    assert main(["merge", str(out)]) == 0  # merge cleans too
    assert not (out / ".ld-tmp-manifest.jsonl.y.jsonl").exists()


def test_no_dataset_json_before_the_first_case(recipe_dict, tmp_path, fakes, ct_folder, save_nifti, verify):
    """A bank killed (or stopped) before its first case made nnU-Net's check die with a bare StopIteration."""
    import nibabel as nib
    import numpy as np

    cts, segs = ct_folder
    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    good = {p.name: p.read_bytes() for p in segs.iterdir()}
    for p in segs.iterdir():
        save_nifti(np.zeros(nib.load(p).shape, np.uint8), p)  # no organ anywhere: every case fails
    summary = build_bank(recipe, out, progress=False, **fakes)
    assert summary.stopped and not summary.done
    assert (out / "bank.json").is_file() and not (out / "dataset.json").exists()
    from synthesis_bank.prepare import prepare_bank

    with pytest.raises(InputError, match="no finished case yet"):
        prepare_bank(out, 3)
    for name, data in good.items():
        (segs / name).write_bytes(data)
    assert build_bank(recipe, out, resume=True, progress=False, **fakes).ok
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6
    assert len(read_manifest(out / "manifest.jsonl")) == 9  # 3 failed lines, then 6 ok
    verify(out)


def test_folders_that_cannot_be_flocked_fall_back_to_the_lock_file(tmp_path, monkeypatch):
    """NFS emulates flock with POSIX locks, which need a writable descriptor: a directory gives EBADF."""
    import errno
    import stat

    import synthesis_bank.lock as lock

    real = lock.fcntl.flock

    def nfs_like(fd, op):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", nfs_like)
    with bank_lock(tmp_path, job="first"):
        with pytest.raises(BankLockedError, match=rf"pid {os.getpid()} \(first"):
            with bank_lock(tmp_path, job="second"):
                pass
    with bank_lock(tmp_path, job="second"):
        pass
