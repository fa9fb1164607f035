"""The manifest survives torn writes; shard manifests merge with dedupe and conflict detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.manifest import (ManifestWriter, collect_entries, merge_manifests, read_manifest,
                                     write_dataset_json)


def _entry(case_id: str, status: str = "ok", **extra) -> dict:
    return {"case_id": case_id, "status": status, "source_id": case_id.split("_syn")[0], "seed": 1,
            "source_sha256": "ab", "engine": {"mask": "procedural"}, "checkpoints": {}, **extra}


def _write(path: Path, entries: list[dict]) -> None:
    with ManifestWriter(path) as writer:
        for e in entries:
            writer.append(e)


def test_torn_final_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "manifest.jsonl"
    _write(path, [_entry("a_syn000"), _entry("b_syn000")])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 15])  # cut mid-line, as a kill -9 during write would
    assert [e["case_id"] for e in read_manifest(path)] == ["a_syn000"]
    _write(path, [_entry("c_syn000")])  # the next writer drops the torn fragment first
    assert [e["case_id"] for e in read_manifest(path)] == ["a_syn000", "c_syn000"]
    assert path.read_bytes().endswith(b"\n")
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_garbled_last_line_is_treated_as_torn(tmp_path):
    path = tmp_path / "manifest.jsonl"
    _write(path, [_entry("a_syn000")])
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00\x00\n")  # zero-filled tail after a crash
    assert [e["case_id"] for e in read_manifest(path)] == ["a_syn000"]
    _write(path, [_entry("b_syn000")])
    assert [e["case_id"] for e in read_manifest(path)] == ["a_syn000", "b_syn000"]


def test_corruption_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(_entry("a_syn000")) + "\n{not json\n" + json.dumps(_entry("b_syn000")) + "\n")
    with pytest.raises(InputError, match=r"manifest\.jsonl:2"):
        read_manifest(path)


def test_merge_dedupes_prefers_ok_and_keeps_one_line_per_case(tmp_path):
    _write(tmp_path / "manifest.shard-0-of-2.jsonl", [_entry("a_syn000", "failed", error="x"), _entry("b_syn000")])
    _write(tmp_path / "manifest.shard-1-of-2.jsonl", [_entry("a_syn000"), _entry("c_syn000", "failed", error="y")])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}, "name": "x"}))
    for cid in ("a_syn000", "b_syn000"):
        _files(tmp_path, cid)
    merged = merge_manifests(tmp_path)
    entries = read_manifest(merged)
    assert [(e["case_id"], e["status"]) for e in entries] == [
        ("a_syn000", "ok"), ("b_syn000", "ok"), ("c_syn000", "failed")]
    assert merge_manifests(tmp_path) == merged and len(read_manifest(merged)) == 3  # idempotent
    assert json.loads((tmp_path / "dataset.json").read_text())["ld_augment"]["num_failed"] == 1


def test_merge_rejects_conflicting_duplicates(tmp_path):
    _write(tmp_path / "manifest.shard-0-of-2.jsonl", [_entry("a_syn000")])
    _write(tmp_path / "manifest.shard-1-of-2.jsonl", [_entry("a_syn000", seed=2)])
    with pytest.raises(ConfigError, match=r"a_syn000.*seed"):
        merge_manifests(tmp_path)


def test_merge_without_manifests_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no manifest"):
        merge_manifests(tmp_path)


def test_dataset_json_counts_ok_cases_with_files(tmp_path):
    _write(tmp_path / "manifest.jsonl", [_entry("a_syn000"), _entry("b_syn000"), _entry("c_syn000", "failed")])
    for cid in ("a_syn000", "c_syn000"):
        _files(tmp_path, cid)
    ds = write_dataset_json(tmp_path, {"labels": {"background": 0, "lesion": 1}})
    assert ds["numTraining"] == 1  # b has no files, c failed
    assert set(collect_entries(tmp_path)) == {"a_syn000", "b_syn000", "c_syn000"}


def test_no_dataset_json_without_a_finished_case(tmp_path):
    """nnU-Net's verify_dataset_integrity dies with a bare StopIteration on a 0-case dataset.json."""
    _write(tmp_path / "manifest.jsonl", [_entry("a_syn000"), _entry("c_syn000", "failed")])
    (tmp_path / "dataset.json").write_text("{}")  # e.g. left by an earlier writer
    assert write_dataset_json(tmp_path, {"labels": {"background": 0, "lesion": 1}})["numTraining"] == 0
    assert not (tmp_path / "dataset.json").exists()  # a has no files yet
    _files(tmp_path, "a_syn000")
    assert write_dataset_json(tmp_path, {"labels": {"background": 0, "lesion": 1}})["numTraining"] == 1
    assert json.loads((tmp_path / "dataset.json").read_text())["dataset"].keys() == {"a_syn000"}


def _files(folder, cid):
    for sub, name in (("imagesTr", f"{cid}_0000.nii.gz"), ("labelsTr", f"{cid}.nii.gz")):
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / name).write_bytes(b"x")
