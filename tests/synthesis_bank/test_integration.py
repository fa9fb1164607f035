"""build_bank with the REAL ld_augment.pipeline (procedural engines) on generated CTs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthesis_bank.builder import build_bank
from synthesis_bank.manifest import read_manifest
from synthesis_bank.recipe import Recipe

try:
    from ld_augment.pipeline import preprocess_case, synthesize_case  # noqa: F401
    _PIPELINE_ERROR = None
except ImportError as exc:  # the integrator's stage may not be importable in a partial checkout
    _PIPELINE_ERROR = str(exc)

pytestmark = pytest.mark.skipif(_PIPELINE_ERROR is not None,
                                reason=f"ld_augment.pipeline.preprocess_case/synthesize_case not importable: "
                                       f"{_PIPELINE_ERROR}")


def test_real_pipeline_bank_passes_nnunet_check(recipe_dict, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    data = dict(recipe_dict, variants_per_source=1, lesions_per_case=1)
    out = tmp_path / "Dataset501_LiverBank"
    summary = build_bank(Recipe.from_dict(data, base_dir=Path("/")), out, progress=False)
    assert summary.ok, summary.format_table()
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 3
    for e in entries:
        source = nib.load(e["source_file"])
        image = nib.load(out / "imagesTr" / f"{e['case_id']}_0000.nii.gz")
        label = np.asarray(nib.load(out / "labelsTr" / f"{e['case_id']}.nii.gz").dataobj)
        assert image.shape == source.shape and np.allclose(image.affine, source.affine)  # the source's own grid
        assert (label == 2).any() and (label == 1).any()
        changed = np.asarray(image.dataobj) != np.asarray(source.dataobj)
        assert changed[label == 2].mean() > 0.5  # the lesion was rendered into the CT
        assert e["adherence"] and e["bboxes"] and e["reports"]
        assert e["engine_provenance"]["mask"]
        assert (out / "previews" / f"{e['case_id']}.png").stat().st_size > 0
    verify_dataset_integrity(str(out), num_processes=1)


def test_real_pipeline_keeps_existing_lesions(recipe_dict, nnunet_raw, tmp_path):
    root, segs = nnunet_raw
    data = dict(recipe_dict, sources={"nnunet_raw": str(root), "segmentations": str(segs)}, variants_per_source=1,
                lesions_per_case=2)
    out = tmp_path / "bank"
    summary = build_bank(Recipe.from_dict(data, base_dir=Path("/")), out, progress=False)
    assert summary.ok, summary.format_table()
    for e in read_manifest(out / "manifest.jsonl"):
        source = np.asarray(nib.load(root / "labelsTr" / f"{e['source_id']}.nii.gz").dataobj)
        bank = np.asarray(nib.load(out / "labelsTr" / f"{e['case_id']}.nii.gz").dataobj)
        np.testing.assert_array_equal(bank[source == 2], 2)
        assert ((bank == 2) & (source != 2)).any()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
