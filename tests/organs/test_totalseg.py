"""TotalSegmentator wrapper: weights checked before anything runs, the run isolated and stubbable."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, ExternalServiceError, InputError, MissingDependencyError
from ld_augment.io.nifti import sha256_file
from ld_augment.organs.totalseg import (
    DATASET_FOLDERS,
    MODEL_FILES,
    TRAINER_FAST,
    TRAINER_FULL,
    check_weights,
    totalseg_device,
    required_models,
    roi_subset_for,
    segment_organs,
    totalseg_weights_dir,
)


@pytest.fixture
def ct_path(tmp_path: Path) -> Path:
    data = np.full((16, 16, 12), -1000, np.int16)
    data[4:12, 4:12, 3:9] = 50
    data[8, 8, 6] = 700
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    return path


def install_fake_weights(root: Path, *, fast: bool = True) -> Path:
    for model in required_models(fast=fast):
        for name in MODEL_FILES:
            file = model.folder(root) / name
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(b"{}")
    return root


class FakeRunner:
    """Stands in for subprocess.run: records the call and writes a segmentation where the child would."""

    def __init__(self, returncode: int = 0, write: bool = True, raise_timeout: bool = False) -> None:
        self.calls: list[dict] = []
        self.returncode, self.write, self.raise_timeout = returncode, write, raise_timeout

    def __call__(self, cmd, *, env, timeout):
        args = json.loads(Path(cmd[-1]).read_text())
        home = Path(env["TOTALSEG_HOME_DIR"]) if "TOTALSEG_HOME_DIR" in env else None
        config = json.loads((home / "config.json").read_text()) if home and (home / "config.json").exists() else None
        self.calls.append({"cmd": cmd, "env": dict(env), "timeout": timeout, "args": args, "config": config})
        if self.raise_timeout:
            raise subprocess.TimeoutExpired(cmd, timeout)
        if self.write and self.returncode == 0:
            seg = np.zeros((16, 16, 12), np.uint8)
            seg[4:12, 4:12, 3:9] = 5
            nib.save(nib.Nifti1Image(seg, np.diag([1.5, 1.5, 3.0, 1.0])), args["output"])
        return subprocess.CompletedProcess(cmd, self.returncode, stdout="", stderr="CUDA out of memory\n")


def test_missing_weights_fail_at_once_with_install_hint(tmp_path: Path, ct_path: Path) -> None:
    runner = FakeRunner()
    start = time.monotonic()
    with pytest.raises(MissingDependencyError) as info:
        segment_organs(ct_path, tmp_path / "seg.nii.gz", organs=["liver"], weights_dir=tmp_path / "w", runner=runner)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "totalseg_download_weights -t total_fast" in message and str(tmp_path / "w") in message
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in message and "checkpoint_final.pth" in message
    assert runner.calls == [] and not (tmp_path / "seg.nii.gz").exists()


def test_partial_weights_name_the_missing_file(tmp_path: Path) -> None:
    root = install_fake_weights(tmp_path / "w")
    missing = required_models(fast=True)[1].folder(root) / "fold_0" / "checkpoint_final.pth"
    missing.unlink()
    with pytest.raises(MissingDependencyError, match="Dataset298.*fold_0/checkpoint_final.pth"):
        check_weights(root, fast=True)
    with pytest.raises(MissingDependencyError, match="-t total\\b"):
        check_weights(root, fast=False)


def test_required_models_per_mode() -> None:
    assert [m.dataset_id for m in required_models(fast=True)] == [297, 298]
    assert [m.dataset_id for m in required_models(fast=True, roi_subset=False)] == [297]
    assert [m.dataset_id for m in required_models(fast=False)] == [291, 292, 293, 294, 295, 298]
    folder = required_models(fast=True)[0].folder(Path("/w"))
    assert folder == Path("/w/Dataset297_TotalSegmentator_total_3mm_1559subj/"
                          "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres")


def test_folder_names_match_installed_totalsegmentator() -> None:
    tasks = pytest.importorskip("totalsegmentator.map_tasks_config")
    for dataset_id, folder in DATASET_FOLDERS.items():
        assert tasks.TASK_ID_WEIGHTS_CONFIGS[dataset_id]["foldername"] == folder
    modes = tasks.TASK_CONFIGS["total"]["sub_modes"]
    assert modes["fast"]["task_id"] == 297 and modes["fast"]["trainer"] == TRAINER_FAST
    assert modes["fastest"]["task_id"] == 298 and modes["fastest"]["trainer"] == TRAINER_FAST
    assert modes["default"]["task_id"] == [291, 292, 293, 294, 295] and modes["default"]["trainer"] == TRAINER_FULL


def test_weights_dir_follows_totalsegmentator_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    assert totalseg_weights_dir() == tmp_path / "home" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    assert totalseg_weights_dir() == tmp_path / "weights"
    config = pytest.importorskip("totalsegmentator.config")
    assert config.get_weights_dir() == totalseg_weights_dir()


def test_present_weights_run_the_isolated_child(tmp_path: Path, ct_path: Path) -> None:
    root = install_fake_weights(tmp_path / "w")
    runner = FakeRunner()
    environ_before = dict(os.environ)
    ct_hash = sha256_file(ct_path)
    out = segment_organs(ct_path, tmp_path / "out" / "seg.nii.gz", organs=["Liver", "kidney", "bladder"],
                         device="cuda:0", weights_dir=root, runner=runner, timeout_s=123)
    assert out == tmp_path / "out" / "seg.nii.gz" and int((np.asanyarray(nib.load(str(out)).dataobj) == 5).sum()) > 0
    (call,) = runner.calls
    assert call["cmd"][1:3] == ["-m", "ld_augment.organs._totalseg_worker"]
    assert call["timeout"] == 123
    assert call["args"]["roi_subset"] == ["liver", "kidney_left", "kidney_right", "urinary_bladder"]
    assert call["args"]["fast"] is True and call["args"]["device"] == "gpu:0"
    assert call["args"]["input"] == str(ct_path.resolve()) and call["args"]["output"] != str(out)
    assert call["env"]["TOTALSEG_WEIGHTS_PATH"] == str(root)
    assert call["config"]["send_usage_stats"] is False  # a private config: statistics off
    assert dict(os.environ) == environ_before and sha256_file(ct_path) == ct_hash
    assert [p.name for p in out.parent.iterdir()] == ["seg.nii.gz"]  # no temporary file left


def test_statistics_switch_keeps_the_users_config(
    tmp_path: Path, ct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "userhome"))
    runner = FakeRunner()
    segment_organs(ct_path, tmp_path / "seg.nii.gz", organs=["liver"], statistics=True,
                   weights_dir=install_fake_weights(tmp_path / "w"), runner=runner)
    assert runner.calls[0]["env"]["TOTALSEG_HOME_DIR"] == str(tmp_path / "userhome")


@pytest.mark.parametrize(
    "runner, words",
    [(FakeRunner(raise_timeout=True), "did not finish within 7 s"), (FakeRunner(returncode=3), "exit code 3"),
     (FakeRunner(write=False), "wrote no segmentation")],
    ids=["timeout", "crash", "no output"],
)
def test_child_failures_become_external_service_errors(tmp_path: Path, ct_path: Path, runner, words: str) -> None:
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(ExternalServiceError, match=words):
        segment_organs(ct_path, target, organs=["liver"], weights_dir=install_fake_weights(tmp_path / "w"),
                       runner=runner, timeout_s=7)
    assert not target.exists()


@pytest.mark.parametrize("ours, theirs", [("cpu", "cpu"), ("mps", "mps"), ("cuda", "gpu"), ("gpu", "gpu"),
                                          ("cuda:1", "gpu:1"), ("gpu:2", "gpu:2")])
def test_devices_are_translated_for_totalsegmentator(ours: str, theirs: str) -> None:
    assert totalseg_device(ours) == theirs
    api = pytest.importorskip("totalsegmentator.python_api")
    assert api.validate_device_type_api(theirs) == theirs


def test_bad_arguments_fail_before_the_weight_check(tmp_path: Path, ct_path: Path) -> None:
    with pytest.raises(ConfigError, match="'face' is not a TotalSegmentator v2"):
        segment_organs(ct_path, tmp_path / "s.nii.gz", organs=["face"], weights_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        segment_organs(ct_path, tmp_path / "s.nii.gz", organs=["liver"], device="tpu", weights_dir=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        segment_organs(tmp_path / "none.nii.gz", tmp_path / "s.nii.gz", organs=["liver"], weights_dir=tmp_path)
    assert roi_subset_for(["lung"]) == ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                                        "lung_middle_lobe_right", "lung_lower_lobe_right"]


FAKE_API = """
import json, os
import nibabel as nib
import numpy as np

def totalsegmentator(input, output, **kwargs):
    os.environ["nnUNet_results"] = "/clobbered"  # what the real one does to its process
    seg = np.zeros(nib.load(input).shape, np.uint8)
    seg[2:5, 2:5, 2:5] = 5
    nib.save(nib.Nifti1Image(seg, nib.load(input).affine), output)
    record = {"kwargs": kwargs, "home": os.environ.get("TOTALSEG_HOME_DIR"),
              "weights": os.environ.get("TOTALSEG_WEIGHTS_PATH")}
    with open(os.environ["FAKE_TS_RECORD"], "w") as fh:
        json.dump(record, fh)
"""


def test_real_subprocess_with_a_stub_totalsegmentator(tmp_path: Path, ct_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake" / "totalsegmentator"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "python_api.py").write_text(FAKE_API)
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), str(repo)]))
    monkeypatch.setenv("FAKE_TS_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("nnUNet_results", "/mine")
    root = install_fake_weights(tmp_path / "w")
    out = segment_organs(ct_path, tmp_path / "seg.nii.gz", organs=["liver"], weights_dir=root, timeout_s=120)
    assert int((np.asanyarray(nib.load(str(out)).dataobj) == 5).sum()) == 27
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["weights"] == str(root) and record["home"] and record["home"] != os.environ.get("TOTALSEG_HOME_DIR")
    assert record["kwargs"] == {"ml": True, "fast": True, "roi_subset": ["liver"], "device": "cpu", "quiet": True,
                                "statistics": False, "task": "total"}
    assert os.environ["nnUNet_results"] == "/mine"  # the child's rewrite stayed in the child


def test_worker_passes_only_arguments_totalsegmentator_accepts() -> None:
    import inspect

    api = pytest.importorskip("totalsegmentator.python_api")
    accepted = set(inspect.signature(api.totalsegmentator).parameters)
    assert {"input", "output", "ml", "fast", "roi_subset", "device", "quiet", "statistics", "task"} <= accepted
