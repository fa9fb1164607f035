"""Issue 22 (full disk while `ld-augment train` saves): one line naming the file, exit 2, the previous state
intact and no temporary file left. The probe got two raw tracebacks and an inline_container.cc error.

The disk is filled by substitution: torch.save writes part of the file, then fails the way it does on ENOSPC
(an OSError through a Python file, or torch's C++ RuntimeError that carries no errno and no file name).
"""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from ld_augment.cli.main import main
from ld_augment.nets import checkpoints

TORCH_ENOSPC = ("[enforce fail at inline_container.cc:603] . unexpected pos 8960 vs 8854\n"
                "PytorchStreamWriter failed writing file data/3: file write failed")


def _failing_save(monkeypatch, fail_from_call: int, error: Exception):
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < fail_from_call:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 partial")  # what a full disk leaves behind in the temp file
        raise error

    monkeypatch.setattr(checkpoints.torch, "save", save)
    return calls


def _argv(cases_dir: Path, out: Path) -> list[str]:
    return ["train", "lmnet", "--data", str(cases_dir), "--out", str(out), "--config", "tiny", "--steps", "3",
            "--crop", "8x16x16", "--save-every", "1", "--no-progress"]


@pytest.mark.parametrize("kind", ["oserror", "torch_runtime_error"])
def test_full_disk_during_a_state_save_is_one_line_and_keeps_the_previous_state(cases_dir, tmp_path, monkeypatch,
                                                                               capsys, kind):
    out = tmp_path / "run"
    if kind == "oserror":
        error: Exception = OSError(errno.ENOSPC, "No space left on device")
    else:
        error = RuntimeError(TORCH_ENOSPC)
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 4096))
    _failing_save(monkeypatch, fail_from_call=2, error=error)  # step 1 is saved, step 2's save fails

    assert main(_argv(cases_dir, out)) == 2
    err = capsys.readouterr().err.strip()
    state = out / "lmnet_train_state.pt"
    assert len(err.splitlines()) == 1, err
    assert str(state) in err and "No space left on device" in err and "previous one is unchanged" in err
    assert "Traceback" not in err and "inline_container" not in err
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert saved["step"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_full_disk_on_the_final_weights_names_them(cases_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = _argv(cases_dir, out)
    argv[argv.index("--save-every") + 1] = "100"
    _failing_save(monkeypatch, fail_from_call=2, error=OSError(errno.ENOSPC, "No space left on device"))
    assert main(argv) == 2  # call 1: the state at the last step; call 2: the final weights
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / "lmnet.pt") in err and "nothing was written" in err
    assert not (out / "lmnet.pt").exists()


def test_other_runtime_errors_are_not_disguised_as_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad tensor")))
    with pytest.raises(RuntimeError, match="bad tensor"):
        checkpoints.atomic_torch_save({"x": 1}, tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_name_the_file_on_a_full_disk(tmp_path, monkeypatch):
    from ld_augment.io.atomic import atomic_write_json

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as err:
        atomic_write_json(tmp_path / "case.json", {"a": 1})
    assert err.value.filename == str(tmp_path / "case.json") and err.value.errno == errno.ENOSPC
