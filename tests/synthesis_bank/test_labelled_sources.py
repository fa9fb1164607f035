"""Labelled nnU-Net sources: their own organ label as the organ segmentation, one organ boundary per case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.builder import build_bank
from synthesis_bank.label_mapping import source_roles, source_to_scheme
from synthesis_bank.labels import union_labels
from synthesis_bank.manifest import read_manifest
from synthesis_bank.plan import plan_build
from synthesis_bank.recipe import Recipe

SCHEME = {"background": 0, "organ": 1, "lesion": 2}


def test_source_roles_read_names():
    roles = source_roles({"background": 0, "cancer": 1, "liver": 2, "spleen": 3, "cyst": 4}, "liver")
    assert roles == {0: "background", 1: "lesion", 2: "organ", 3: "background", 4: "lesion"}
    label = np.array([0, 1, 2, 3, 4])
    assert source_to_scheme(label, roles, SCHEME, file="s").tolist() == [0, 2, 1, 0, 2]
    assert source_to_scheme(label, roles, {"background": 0, "lesion": 1}, file="s").tolist() == [0, 1, 0, 0, 1]
    assert source_roles(SCHEME, "kidney_left") == {0: "background", 1: "organ", 2: "lesion"}   # a bank's scheme
    with pytest.raises(ConfigError, match="region-based"):
        source_roles({"background": 0, "kidney": [1, 2]}, "kidney_left")


def test_union_takes_one_organ_boundary():
    source = np.array([0, 1, 1, 2, 0])          # source organ, an annotated lesion
    synth = np.array([1, 1, 0, 1, 2])           # the segmentation's organ differs; a new lesion at the end
    assert union_labels(source, synth, SCHEME, organ_from="source").tolist() == [0, 1, 1, 2, 2]
    assert union_labels(source, synth, SCHEME, organ_from="synth").tolist() == [1, 1, 0, 2, 2]


@pytest.fixture()
def swapped_raw(nnunet_raw, tmp_path):
    """The conftest's Dataset010_Liver relabelled MSD-style with swapped values: cancer = 1, liver = 2."""
    root, segs = nnunet_raw
    for f in (root / "labelsTr").glob("*.nii.gz"):
        img = nib.load(str(f))
        lab = np.asarray(img.dataobj)
        swapped = np.where(lab == 1, 2, np.where(lab == 2, 1, 0)).astype(np.uint8)
        nib.save(nib.Nifti1Image(swapped, img.affine), str(f))
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "cancer": 1, "liver": 2}
    (root / "dataset.json").write_text(json.dumps(ds))
    return root, segs


def test_source_label_is_the_organ_segmentation(recipe_dict, swapped_raw, tmp_path, fakes):
    root, _ = swapped_raw
    seen = []

    def preprocess(image, out_dir, *, seg=None, **kw):
        seen.append(seg)
        mask = np.asarray(nib.load(seg).dataobj)
        img = nib.load(seg)
        ids = nib.Nifti1Image(np.where(mask > 0, 5, 0).astype(np.uint8), img.affine)   # the fake reads liver = 5
        return fakes["preprocess_fn"](image, out_dir, seg=ids, **kw)

    data = dict(recipe_dict, sources={"nnunet_raw": str(root)}, segmentation="error", variants_per_source=1)
    recipe = Recipe.from_dict(data, origin="recipe")
    assert len(plan_build(recipe)) == 2              # no segmentations folder needed: the label has liver
    out = tmp_path / "bank"
    summary = build_bank(recipe, out, progress=False, preprocess_fn=preprocess,
                         synthesize_fn=fakes["synthesize_fn"])
    assert summary.ok, summary.format_table()
    assert all(s.endswith("organ_from_label.nii.gz") for s in seen)
    for e in read_manifest(out / "manifest.jsonl"):
        assert e["organ_segmentation"] == "source label"
        source = np.asarray(nib.load(root / "labelsTr" / f"{e['source_id']}.nii.gz").dataobj)
        bank = np.asarray(nib.load(out / "labelsTr" / f"{e['case_id']}.nii.gz").dataobj)
        np.testing.assert_array_equal(bank[source == 1], 2)      # source cancer (1) -> bank lesion (2), kept
        assert ((bank == 2) & (source == 2)).any()               # a new lesion inside the source's liver
        assert not ((bank > 0) & (source == 0)).any()            # organ = the source's annotation, nothing added
