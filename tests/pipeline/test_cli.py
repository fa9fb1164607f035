"""The `ld-augment` command line: both preprocess forms, batch synthesize past a bad case, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.cli.main import main


def test_help_lists_every_job(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for job in ("preprocess", "synthesize", "bank", "nnunet", "quickstart"):
        assert job in out


def test_single_ct_form_then_synthesize(ct_variants, tmp_path, capsys) -> None:
    ct, seg = ct_variants["ras"]
    case = tmp_path / "case"
    rc = main(["preprocess", "--image", str(ct), "--seg", str(seg), "--organ", "liver", "--lesion-type", "cyst",
               "--attr", "size=[[10 10 8]] pixel", "--num-lesions", "2", "--spacing", "1.5", "--out", str(case)])
    assert rc == 0 and (case / "case.json").is_file()
    assert json.loads((case / "case.json").read_text())["spacing"] == [1.5, 1.5, 1.5]
    rc = main(["synthesize", str(case), "--out", str(tmp_path / "syn"), "--seed", "3", "--no-preview"])
    assert rc == 0
    label = np.asarray(nib.load(str(tmp_path / "syn" / "label.nii.gz")).dataobj)
    assert (label == 2).any()
    assert "lesion 2:" in capsys.readouterr().err  # per-lesion timings are printed


def test_original_form_writes_lists_and_reports_failures(ct_variants, tmp_path, capsys) -> None:
    ct, seg = ct_variants["ras"]
    filelist = tmp_path / "files.txt"
    filelist.write_text(f"{ct},{seg}\n{tmp_path / 'nope.nii.gz'},{seg}\n")
    exp = tmp_path / "exp"
    attrs = json.dumps({"organ": "liver", "lesion_type": "metastasis", "density": "hypodense lesion"})
    rc = main(["preprocess", str(filelist), str(exp), attrs, "--spacing", "2", "--no-progress"])
    assert rc == 1  # one case failed, the other finished
    err = capsys.readouterr().err
    assert "FAILED" in err and "nope.nii.gz" in err and "1 succeeded, 1 failed" in err
    for name in ("img_list", "seg_list", "type_list", "bbox_list"):
        lines = (exp / f"{name}.txt").read_text().splitlines()
        assert len(lines) == 1 and Path(lines[0]).is_file()
    # synthesize reads the original's list files; a bad entry does not stop the batch
    bad = tmp_path / "not_a_case"
    bad.mkdir()
    lst = tmp_path / "cases.txt"
    lst.write_text((exp / "img_list.txt").read_text() + f"{bad}\n")
    rc = main(["synthesize", str(lst), "--out", str(tmp_path / "syn"), "--no-preview", "--no-progress"])
    assert rc == 1
    done = [p for p in (tmp_path / "syn").iterdir() if (p / "ct.nii.gz").is_file()]
    assert len(done) == 1


def test_bad_arguments_exit_with_a_message(tmp_path, capsys) -> None:
    assert main(["preprocess", "--image", "x.nii.gz"]) == 2
    assert "--organ" in capsys.readouterr().err
    assert main(["synthesize", str(tmp_path), "--out", str(tmp_path / "o"), "--label-scheme", "{oops"]) == 2


def test_moved_source_is_found_with_source_and_checked_by_hash(ct_variants, tmp_path, capsys) -> None:
    import shutil

    ct, seg = ct_variants["ras"]
    moved = tmp_path / "moved.nii.gz"
    shutil.copy(ct, tmp_path / "ct.nii.gz")
    case = tmp_path / "case"
    assert main(["preprocess", "--image", str(tmp_path / "ct.nii.gz"), "--seg", str(seg), "--organ", "liver",
                 "--lesion-type", "cyst", "--attr", "size=[[8 8 8]] pixel", "--spacing", "2",
                 "--out", str(case)]) == 0
    (tmp_path / "ct.nii.gz").rename(moved)
    assert main(["synthesize", str(case), "--out", str(tmp_path / "a"), "--no-preview"]) == 2  # one case: exit 2
    assert "not found" in capsys.readouterr().err
    assert main(["synthesize", str(case), "--out", str(tmp_path / "b"), "--no-preview", "--source", str(moved)]) == 0
    assert main(["synthesize", str(case), "--out", str(tmp_path / "c"), "--no-preview", "--source", str(seg)]) == 2
    assert "changed since preprocessing" in capsys.readouterr().err
