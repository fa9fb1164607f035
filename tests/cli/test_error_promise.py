"""Issue 22 (the promise): every bad input or full disk is exit 2 and ONE line naming the file and the problem.

Probed breaks: single-CT `preprocess` exited 1; "No space left on device" without a file; an empty reason for
an oversized header; a 10-line affine-mismatch error; a bank written inside a source checkout without a word.
"""

from __future__ import annotations

import errno
import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.cli.common import run_command
from ld_augment.cli.main import main
from ld_augment.errors import InputError

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _case(tmp_path: Path, seg_affine: np.ndarray = AFFINE) -> tuple[Path, Path]:
    """A 40^3 CT (2 mm) with an ellipsoid liver, and its segmentation (liver = 5)."""
    grid = np.indices((40, 40, 40)).astype(float)
    liver = (((grid - 20) / np.array([14, 11, 9]).reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1
    ct = np.full((40, 40, 40), -1000, np.int16)
    ct[4:-4, 4:-4, 4:-4] = 30
    ct[liver] = 60
    ct[20, 3:6, 20] = 700
    ct = ct + np.random.default_rng(0).integers(0, 10, ct.shape, dtype=np.int16)
    ct_path, seg_path = tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(ct, AFFINE), str(ct_path))
    nib.save(nib.Nifti1Image(np.where(liver, 5, 0).astype(np.uint8), seg_affine), str(seg_path))
    return ct_path, seg_path


def _preprocess(ct: Path, seg: Path, out: Path) -> list[str]:
    return ["preprocess", "--image", str(ct), "--seg", str(seg), "--organ", "liver", "--lesion-type", "cyst",
            "--spacing", "2", "--out", str(out)]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_single_ct_preprocess_exits_2_on_a_bad_input(tmp_path, capsys):
    ct, seg = _case(tmp_path)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 1), np.int16), AFFINE), str(flat))
    assert main(_preprocess(flat, seg, tmp_path / "case")) == 2
    err = _one_line(capsys)
    assert str(flat) in err and "2D" in err


def test_affine_mismatch_is_exit_2_and_one_line(tmp_path, capsys):
    moved = AFFINE.copy()
    moved[:3, 3] = [0.0, 0.0, 6.0]
    ct, seg = _case(tmp_path, seg_affine=moved)
    assert main(_preprocess(ct, seg, tmp_path / "case")) == 2
    err = _one_line(capsys)
    assert "different affines" in err and str(seg) in err and "origin (0.0, 0.0, 6.0) mm" in err


def test_oversized_header_gives_a_reason(tmp_path, capsys):
    ct, _ = _case(tmp_path)
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_offset(352)
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(header.binaryblock + b"\0" * 68))
    assert main(_preprocess(ct, bomb, tmp_path / "case")) == 2
    err = _one_line(capsys)
    assert str(bomb) in err and "cannot hold" in err


def test_full_disk_while_writing_a_case_names_the_file(tmp_path, capsys, monkeypatch):
    ct, seg = _case(tmp_path)

    def full_disk(img, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError(errno.ENOSPC, "No space left on device")  # a write through gzip: no file name

    monkeypatch.setattr(nib, "save", full_disk)
    assert main(_preprocess(ct, seg, tmp_path / "case")) == 2
    err = _one_line(capsys)
    assert "No space left on device" in err and str(tmp_path / "case") in err and ".nii.gz" in err
    assert not list((tmp_path / "case").glob(".*"))  # no temporary file left


def test_a_good_single_ct_still_exits_0(tmp_path, capsys):
    ct, seg = _case(tmp_path)
    assert main(_preprocess(ct, seg, tmp_path / "case")) == 0
    assert (tmp_path / "case" / "case.json").is_file()


def test_multi_line_messages_become_one_line(capsys):
    def job() -> int:
        raise InputError("first line\n  second line\n")

    assert run_command(job, "ld-augment x") == 2
    assert capsys.readouterr().err.strip() == "ld-augment x: error: first line; second line"


def test_bank_inside_the_package_is_refused_and_inside_a_checkout_warned(tmp_path, capsys, caplog):
    import ld_augment
    from ld_augment.settings import source_tree_of
    from synthesis_bank.cli import main as bank_main

    inside_package = Path(ld_augment.__file__).parent / "resources" / "my_bank"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("organs: [liver]\n")
    assert bank_main(["build", "--recipe", str(recipe), "--out", str(inside_package), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert "inside the installed package" in err and not inside_package.exists()

    checkout = tmp_path / "clone"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "ld_augment").mkdir()
    (checkout / "ld_augment" / "__init__.py").write_text("")
    assert source_tree_of(checkout / "banks" / "b1") == ("checkout", checkout.resolve())
    assert source_tree_of(tmp_path / "elsewhere") is None
    with caplog.at_level(logging.WARNING):
        bank_main(["build", "--recipe", str(recipe), "--out", str(checkout / "bank"), "--no-progress"])
    assert "inside the ld-augment source checkout" in caplog.text
