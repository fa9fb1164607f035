"""`storage: patches` banks: each case is its source plus its changed region, composed back bit for bit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.builder import build_bank
from synthesis_bank.manifest import read_manifest
from synthesis_bank.materialize import materialize_bank
from synthesis_bank.recipe import Recipe


def _recipe(data) -> Recipe:
    return Recipe.from_dict(data, base_dir=Path("/"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _du(folder: Path, subs) -> int:
    return sum(f.stat().st_size for s in subs for f in (folder / s).rglob("*") if f.is_file())


def _pair(recipe_dict, tmp_path, fakes, **extra):
    full, patches = tmp_path / "Dataset501_Full", tmp_path / "Dataset502_Patches"
    assert build_bank(_recipe(dict(recipe_dict, **extra)), full, progress=False, **fakes).ok
    summary = build_bank(_recipe(dict(recipe_dict, storage="patches", **extra)), patches, progress=False, **fakes)
    assert summary.ok, summary.format_table()
    return full, patches


def test_patch_bank_stores_regions_and_materializes_bit_identical(recipe_dict, tmp_path, fakes, verify):
    full, patches = _pair(recipe_dict, tmp_path, fakes)
    entries = read_manifest(patches / "manifest.jsonl")
    assert len(entries) == 6
    for e in entries:
        st = e["storage"]
        assert st["mode"] == "patches" and st["source"]["sha256"] == e["source_sha256"]
        assert not (patches / "imagesTr" / f"{e['case_id']}_0000.nii.gz").exists()
        box = np.asarray(st["box"])
        assert np.prod(box[:, 1] - box[:, 0]) < 0.1 * 40 ** 3   # the region, not the volume
    # the cases of one source share one base label (the lesion-free label)
    assert len(list((patches / "bases").glob("*.npz"))) == 3
    assert json.loads((patches / "dataset.json").read_text())["numTraining"] == 0   # nothing to read yet
    result = materialize_bank(patches)
    assert len(result.written) == 6 and not result.present
    for e in entries:
        cid = e["case_id"]
        for sub, name in (("imagesTr", f"{cid}_0000.nii.gz"), ("labelsTr", f"{cid}.nii.gz")):
            assert _digest(patches / sub / name) == _digest(full / sub / name), (cid, sub)
    assert json.loads((patches / "dataset.json").read_text())["numTraining"] == 6
    verify(patches)
    assert materialize_bank(patches).present and not materialize_bank(patches).written   # idempotent


def test_patch_bank_is_smaller_and_resumes(recipe_dict, tmp_path, fakes):
    full, patches = _pair(recipe_dict, tmp_path, fakes)
    assert _du(patches, ("patches", "bases")) < 0.5 * _du(full, ("imagesTr", "labelsTr"))
    before = {p.name: p.stat().st_mtime_ns for p in (patches / "patches").iterdir()}
    summary = build_bank(_recipe(dict(recipe_dict, storage="patches")), patches, resume=True, progress=False, **fakes)
    assert len(summary.resumed) == 6 and not summary.done
    (patches / "patches" / sorted(before)[0]).write_bytes(b"garbage")   # a damaged patch is redone
    summary = build_bank(_recipe(dict(recipe_dict, storage="patches")), patches, resume=True, progress=False, **fakes)
    assert len(summary.done) == 1


def test_compose_refuses_a_changed_source(recipe_dict, tmp_path, fakes, save_nifti):
    _, patches = _pair(recipe_dict, tmp_path, fakes, variants_per_source=1)
    entry = read_manifest(patches / "manifest.jsonl")[0]
    src = Path(entry["storage"]["source"]["path"])
    data = np.asarray(nib.load(src).dataobj).copy()
    data[0, 0, 0] += 7
    save_nifti(data, src)
    with pytest.raises(InputError, match="sha256 mismatch"):
        materialize_bank(patches)


def test_storage_option_is_validated_and_default_keeps_recipe_hash(recipe_dict):
    with pytest.raises(ConfigError, match="storage"):
        _recipe(dict(recipe_dict, storage="zip"))
    assert "storage" not in _recipe(recipe_dict).to_dict()            # old banks keep their recipe hash
    assert _recipe(dict(recipe_dict, storage="patches")).to_dict()["storage"] == "patches"


def test_real_pipeline_patch_bank_composes_bit_identical(recipe_dict, tmp_path):
    """The procedural engines write back only near the lesion: the patch is small and composes exactly."""
    pytest.importorskip("ld_augment.pipeline")
    data = dict(recipe_dict, variants_per_source=1, lesions_per_case=1)
    full, patches = tmp_path / "Dataset501_Full", tmp_path / "Dataset502_Patches"
    assert build_bank(_recipe(data), full, progress=False).ok
    assert build_bank(_recipe(dict(data, storage="patches")), patches, progress=False).ok
    materialize_bank(patches)
    for e in read_manifest(patches / "manifest.jsonl"):
        box = np.asarray(e["storage"]["box"])
        assert np.prod(box[:, 1] - box[:, 0]) < 0.25 * 40 ** 3
        cid = e["case_id"]
        for sub, name in (("imagesTr", f"{cid}_0000.nii.gz"), ("labelsTr", f"{cid}.nii.gz")):
            assert _digest(patches / sub / name) == _digest(full / sub / name), (cid, sub)


def test_materialize_cli(recipe_dict, write_recipe, tmp_path, capsys, monkeypatch, bank_fakes):
    import synthesis_bank.builder as builder
    from synthesis_bank.cli import main

    monkeypatch.setattr(builder, "_default_pipeline", lambda: (bank_fakes.fake_preprocess, bank_fakes.fake_synthesize))
    recipe = write_recipe(dict(recipe_dict, variants_per_source=1, storage="patches"))
    out = tmp_path / "bank"
    assert main(["build", "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert main(["materialize", str(out), "--no-progress"]) == 0
    assert "materialized 3 case(s)" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
    assert main(["materialize", str(tmp_path / "nowhere")]) == 2
    assert "not a bank folder" in capsys.readouterr().err


def test_case_that_is_no_patch_of_its_source_is_stored_in_full(recipe_dict, tmp_path, fakes, monkeypatch):
    """Another dtype or shape than the source (e.g. an engine that writes float CTs): full files, still a bank."""
    from synthesis_bank import patch_store

    real = patch_store.cut_patch
    calls = []

    def first_is_no_patch(*args, **kwargs):
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(patch_store, "cut_patch", first_is_no_patch)
    bank = tmp_path / "bank"
    assert build_bank(_recipe(dict(recipe_dict, storage="patches", variants_per_source=1)), bank, progress=False,
                      **fakes).ok
    entries = read_manifest(bank / "manifest.jsonl")
    full = [e for e in entries if "storage" not in e]
    assert len(full) == 1 and (bank / "imagesTr" / f"{full[0]['case_id']}_0000.nii.gz").is_file()
    assert json.loads((bank / "dataset.json").read_text())["numTraining"] == 1
    materialize_bank(bank)
    assert json.loads((bank / "dataset.json").read_text())["numTraining"] == 3
