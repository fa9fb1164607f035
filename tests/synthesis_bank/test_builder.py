"""build_bank with fast fake pipeline functions: layout, manifest, failures, label union, resume, shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.builder import build_bank
from synthesis_bank.manifest import merge_manifests, read_manifest
from synthesis_bank.recipe import Recipe

MANIFEST_KEYS = {"case_id", "source_id", "source_file", "source_sha256", "reports", "bboxes", "engine",
                 "checkpoints", "seed", "timings", "adherence", "status"}


def _recipe(data) -> Recipe:
    return Recipe.from_dict(data, base_dir=Path("/"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_writes_an_nnunet_raw_dataset(recipe_dict, tmp_path, fakes):
    out = tmp_path / "Dataset501_LiverBank"
    summary = build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    assert summary.ok and len(summary.done) == 6 and summary.assigned == summary.planned == 6
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 6
    for e in entries:
        assert MANIFEST_KEYS <= set(e) and e["status"] == "ok"
        cid = e["case_id"]
        assert (out / "imagesTr" / f"{cid}_0000.nii.gz").is_file()
        assert (out / "previews" / f"{cid}.png").is_file()
        label = np.asarray(nib.load(out / "labelsTr" / f"{cid}.nii.gz").dataobj)
        assert set(np.unique(label)) <= {0, 1, 2} and (label == 2).any()
        assert e["source_sha256"] == _digest(Path(e["source_file"]))
        assert e["engine"] == {"mask": "procedural", "texture": "procedural"}
        assert e["adherence"] == [{"dice_to_box": 0.5}] and len(e["bboxes"]) == e["num_lesions"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 6 and ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert ds["ld_augment"]["recipe"]["seed"] == 7
    assert not (out / ".work").exists()
    assert "synthesized" in summary.format_table()


def test_dataset_passes_nnunet_integrity_check(recipe_dict, tmp_path, fakes):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    out = tmp_path / "Dataset501_LiverBank"
    build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    verify_dataset_integrity(str(out), num_processes=1)  # raises (assert/RuntimeError) on any problem


def test_bad_source_is_skipped_and_reported(recipe_dict, ct_folder, tmp_path, fakes):
    cts, segs = ct_folder
    (cts / "case_b.nii.gz").write_bytes(b"this is not a nifti file")
    out = tmp_path / "bank"
    summary = build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    assert not summary.ok
    assert sorted(c for c, _, _ in summary.failed) == ["case_b_syn000", "case_b_syn001"]
    assert len(summary.done) == 4
    entries = {e["case_id"]: e for e in read_manifest(out / "manifest.jsonl")}
    assert entries["case_b_syn000"]["status"] == "failed" and entries["case_b_syn000"]["error"]
    assert not (out / "imagesTr" / "case_b_syn000_0000.nii.gz").exists()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4
    assert "case_b_syn000" in summary.format_table()


def test_labelled_sources_keep_their_labels(recipe_dict, nnunet_raw, tmp_path, fakes):
    root, segs = nnunet_raw
    data = dict(recipe_dict, sources={"nnunet_raw": str(root), "segmentations": str(segs)}, variants_per_source=3,
                lesions_per_case=3)
    out = tmp_path / "bank"
    summary = build_bank(_recipe(data), out, progress=False, **fakes)
    assert summary.ok, summary.format_table()
    for e in read_manifest(out / "manifest.jsonl"):
        source = np.asarray(nib.load(root / "labelsTr" / f"{e['source_id']}.nii.gz").dataobj)
        bank = np.asarray(nib.load(out / "labelsTr" / f"{e['case_id']}.nii.gz").dataobj)
        assert e["source_id"] in {"liver_000", "liver_001"} and e["case_id"].startswith(e["source_id"] + "_syn")
        np.testing.assert_array_equal(bank[source == 2], 2)              # annotated tumour kept
        new = (bank == 2) & (source != 2)
        assert new.any()                                                  # new lesions added ...
        assert not (new & (source == 2)).any()                            # ... never over the old one
        np.testing.assert_array_equal(bank[(source == 1) & ~new], 1)      # organ labels kept elsewhere
        assert set(np.unique(bank)) <= {0, 1, 2}


def test_existing_output_needs_resume(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    with pytest.raises(ConfigError, match="--resume"):
        build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    with pytest.raises(ConfigError, match="recipe changed"):
        build_bank(_recipe(dict(recipe_dict, seed=8)), out, resume=True, progress=False, **fakes)


def test_resume_redoes_partial_and_failed_cases_only(recipe_dict, ct_folder, tmp_path, fakes):
    cts, _ = ct_folder
    good = (cts / "case_b.nii.gz").read_bytes()
    (cts / "case_b.nii.gz").write_bytes(b"broken")
    out = tmp_path / "bank"
    build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    # Simulate a kill between moving a case's files and writing its line: files present, no manifest line.
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    partial = json.loads(lines[-1])["case_id"]
    (out / "manifest.jsonl").write_text("".join(lines[:-1]))
    finished = [json.loads(x)["case_id"] for x in lines[:-1] if json.loads(x)["status"] == "ok"]
    before = {c: ((out / "imagesTr" / f"{c}_0000.nii.gz").stat().st_mtime_ns,
                  _digest(out / "labelsTr" / f"{c}.nii.gz")) for c in finished}
    (cts / "case_b.nii.gz").write_bytes(good)  # the bad source was fixed
    summary = build_bank(_recipe(recipe_dict), out, resume=True, progress=False, **fakes)
    assert summary.ok and sorted(summary.resumed) == sorted(finished)
    assert sorted(summary.done) == sorted({partial, "case_b_syn000", "case_b_syn001"})
    for c, (mtime, digest) in before.items():
        assert (out / "imagesTr" / f"{c}_0000.nii.gz").stat().st_mtime_ns == mtime
        assert _digest(out / "labelsTr" / f"{c}.nii.gz") == digest
    ok_ids = [e["case_id"] for e in read_manifest(out / "manifest.jsonl") if e["status"] == "ok"]
    assert sorted(ok_ids) == sorted(set(ok_ids)) and len(ok_ids) == 6  # no duplicate ok lines
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6


def test_shards_build_disjoint_parts_that_merge_into_the_whole(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    summaries = [build_bank(_recipe(recipe_dict), out, shard=(i, 3), progress=False, **fakes) for i in range(3)]
    parts = [set(s.done) for s in summaries]
    assert sum(len(p) for p in parts) == 6 and len(set.union(*parts)) == 6
    assert not (out / "manifest.jsonl").exists()
    for i in range(3):
        assert {e["case_id"] for e in read_manifest(out / f"manifest.shard-{i}-of-3.jsonl")} == parts[i]
    merge_manifests(out)
    merged = read_manifest(out / "manifest.jsonl")
    assert sorted(e["case_id"] for e in merged) == sorted(set.union(*parts))
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 6


def test_torchrun_environment_selects_the_shard(recipe_dict, tmp_path, monkeypatch, fakes):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "bank"
    summary = build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    assert summary.shard == (1, 2) and (out / "manifest.shard-1-of-2.jsonl").is_file()


def test_missing_organ_fails_that_case_only(recipe_dict, ct_folder, tmp_path, fakes, save_nifti):
    cts, segs = ct_folder
    seg = np.asarray(nib.load(segs / "case_c.nii.gz").dataobj)
    save_nifti(np.zeros_like(seg), segs / "case_c.nii.gz")
    summary = build_bank(_recipe(recipe_dict), tmp_path / "bank", progress=False, **fakes)
    assert {c for c, _, _ in summary.failed} == {"case_c_syn000", "case_c_syn001"}
    assert all("not found" in err for _, _, err in summary.failed)


def test_scheme_without_organ_class(recipe_dict, tmp_path, fakes):
    data = dict(recipe_dict, variants_per_source=1, label_scheme={"background": 0, "lesion": 1})
    out = tmp_path / "bank"
    assert build_bank(_recipe(data), out, progress=False, **fakes).ok
    for e in read_manifest(out / "manifest.jsonl"):
        label = np.asarray(nib.load(out / "labelsTr" / f"{e['case_id']}.nii.gz").dataobj)
        assert set(np.unique(label)) == {0, 1}
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}


def test_list_file_sources(recipe_dict, ct_folder, tmp_path, fakes):
    cts, segs = ct_folder
    listing = tmp_path / "lists" / "sources.txt"
    listing.parent.mkdir()
    listing.write_text(f"../cts/case_a.nii.gz,../segs/case_a.nii.gz\n\n{cts / 'case_c.nii.gz'},{segs / 'case_c.nii.gz'}\n")
    data = dict(recipe_dict, sources={"list_file": str(listing)}, variants_per_source=1)
    summary = build_bank(_recipe(data), tmp_path / "bank", progress=False, **fakes)
    assert sorted(summary.done) == ["case_a_syn000", "case_c_syn000"]
