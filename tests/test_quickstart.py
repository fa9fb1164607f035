"""The README's main job: the bundled example through preprocess, synthesize and a bank, no weights, no network."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from ld_augment.cli.main import main
from ld_augment.resources import example_ct


def test_quickstart_builds_a_valid_bank(tmp_path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--variants", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Dataset990_QuickstartBank" in printed
    bank = out / "Dataset990_QuickstartBank"
    ds = json.loads((bank / "dataset.json").read_text())
    assert ds["numTraining"] == 1 and ds["labels"]["lesion"] == 2
    (image,) = sorted((bank / "imagesTr").glob("*_0000.nii.gz"))
    (label,) = sorted((bank / "labelsTr").glob("*.nii.gz"))
    src = nib.load(str(example_ct()))
    assert nib.load(str(image)).shape == src.shape and np.allclose(nib.load(str(image)).affine, src.affine)
    assert (np.asarray(nib.load(str(label)).dataobj) == 2).any()
    assert (out / "case" / "preview.png").is_file() and (out / "synthetic" / "preview.png").is_file()
    lines = (bank / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "ok"
