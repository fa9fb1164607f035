"""Issue 12 cases 2, 4 and 8: foreign output folders are refused untouched, a resume must use the first build's
recipe, finished files are verified, orphans stay invisible to nnU-Net, outputs follow the umask."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.builder import build_bank
from synthesis_bank.cli import main
from synthesis_bank.manifest import read_manifest, write_dataset_json
from synthesis_bank.recipe import Recipe


def _recipe(data) -> Recipe:
    return Recipe.from_dict(data, base_dir=Path("/"))


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_nnunet_dataset_is_refused_and_untouched(recipe_dict, nnunet_raw, fakes):
    raw, _ = nnunet_raw
    before = _tree(raw)
    with pytest.raises(ConfigError, match=r"holds an nnU-Net raw dataset not written by ld-augment .*dataset\.json"):
        build_bank(_recipe(recipe_dict), raw, progress=False, **fakes)
    assert _tree(raw) == before
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # not even a lock file


def test_non_empty_folder_is_refused(recipe_dict, tmp_path, fakes):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match=r"home holds other files \(thesis\.tex\)"):
        build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    assert sorted(os.listdir(out)) == ["thesis.tex"]


def test_foreign_folder_via_cli_is_one_line_exit_two(recipe_dict, write_recipe, nnunet_raw, tmp_path, capsys):
    raw, _ = nnunet_raw
    before = (raw / "dataset.json").read_bytes()
    assert main(["build", "--recipe", str(write_recipe(recipe_dict)), "--out", str(raw), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(raw) in err
    assert (raw / "dataset.json").read_bytes() == before
    assert main(["merge", str(raw)]) == 2  # merge will not rewrite a foreign dataset.json either
    assert (raw / "dataset.json").read_bytes() == before


def test_file_as_out_is_one_line_exit_two(recipe_dict, write_recipe, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["build", "--recipe", str(write_recipe(recipe_dict)), "--out", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err and str(target) in err
    assert target.read_text() == "x"


def test_empty_folder_and_own_bank_are_accepted(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    out.mkdir()
    assert build_bank(_recipe(recipe_dict), out, progress=False, **fakes).ok
    marker = json.loads((out / "bank.json").read_text())
    assert marker["format"] == "ld-augment-bank/1" and len(marker["recipe_sha256"]) == 64
    assert build_bank(_recipe(recipe_dict), out, resume=True, progress=False, **fakes).ok


def test_resume_with_changed_recipe_is_refused_naming_the_keys(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    lines_before = (out / "manifest.jsonl").read_bytes()
    changed = dict(recipe_dict, variants_per_source=1, lesion_types={"liver cyst": 1.0}, lesions_per_case=[2, 3])
    with pytest.raises(ConfigError, match=r"changed: lesion_types\.liver cyst, lesion_types\.liver tumor, "
                                          r"lesions_per_case.*--force-recipe-change"):
        build_bank(_recipe(changed), out, resume=True, progress=False, **fakes)
    assert (out / "manifest.jsonl").read_bytes() == lines_before  # nothing mixed in

    summary = build_bank(_recipe(dict(changed, variants_per_source=2)), out, resume=True, force_recipe_change=True,
                         progress=False, **fakes)
    assert summary.ok and len(summary.resumed) == 3 and len(summary.done) == 3
    history = json.loads((out / "bank.json").read_text())["history"]
    assert history[-1]["event"] == "recipe_change" and "variants_per_source" in history[-1]["changed"]


def test_resume_redoes_a_truncated_image(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    image = out / "imagesTr" / "case_b_syn000_0000.nii.gz"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])  # a copy cut short, say
    summary = build_bank(_recipe(recipe_dict), out, resume=True, progress=False, **fakes)
    assert summary.done == ["case_b_syn000"] and len(summary.resumed) == 5
    assert image.read_bytes() == good  # deterministic redo


def test_orphans_are_invisible_to_nnunet(recipe_dict, tmp_path, fakes, verify):
    """A kill between moving a case's files and writing its manifest line leaves an orphan pair (and, before the
    fix, a stale numTraining); the listed dataset stays valid for nnU-Net."""
    out = tmp_path / "bank"
    build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    (out / "imagesTr" / "orphan_syn000_0000.nii.gz").write_bytes((out / "imagesTr" / "case_a_syn000_0000.nii.gz").read_bytes())
    (out / "imagesTr" / "lonely_syn000_0000.nii.gz").write_bytes(b"half")  # its label never arrived
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == len(dataset["dataset"]) == 3
    verify(out)
    write_dataset_json(out)  # what merge does: still only the manifest's finished cases
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(recipe_dict, tmp_path, fakes, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "bank"
        build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for path in [out / "dataset.json", out / "manifest.jsonl", out / "bank.json",
                 *(out / "imagesTr").iterdir(), *(out / "labelsTr").iterdir(), *(out / "previews").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_manifest_records_files_for_verification(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(dict(recipe_dict, variants_per_source=1)), out, progress=False, **fakes)
    for entry in read_manifest(out / "manifest.jsonl"):
        image = out / "imagesTr" / f"{entry['case_id']}_0000.nii.gz"
        assert entry["files"]["image"] == {"size": image.stat().st_size,
                                           "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}


def test_shard_resume_clears_only_its_own_stale_work_folders(recipe_dict, tmp_path, fakes):
    from synthesis_bank.plan import plan_build, select_shard

    out, recipe = tmp_path / "bank", _recipe(recipe_dict)
    build_bank(recipe, out, shard=(0, 2), progress=False, **fakes)
    mine = select_shard(plan_build(recipe), (0, 2))[0].case_id
    ours, other = out / ".work" / mine, out / ".work" / "case_of_shard_1"
    for folder in (ours, other):
        folder.mkdir(parents=True)
        (folder / "partial.nii.gz").write_bytes(b"left by a kill")
    assert build_bank(recipe, out, shard=(0, 2), resume=True, progress=False, **fakes).ok
    assert not ours.exists() and (other / "partial.nii.gz").exists()  # shard 1 may be running right now


def test_whole_build_resume_clears_every_stale_work_folder(recipe_dict, tmp_path, fakes):
    out = tmp_path / "bank"
    build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    (out / ".work" / "anything").mkdir(parents=True)
    (out / ".work" / "anything" / "partial.nii.gz").write_bytes(b"left by a kill")
    assert build_bank(_recipe(recipe_dict), out, resume=True, progress=False, **fakes).ok
    assert not (out / ".work").exists()  # the exclusive lock: nobody else can be working there


def test_bank_without_marker_is_checked_against_its_recorded_recipe(recipe_dict, tmp_path, fakes):
    """Banks built before bank.json existed: dataset.json's recorded recipe stands in for the marker."""
    out = tmp_path / "bank"
    build_bank(_recipe(recipe_dict), out, progress=False, **fakes)
    (out / "bank.json").unlink()
    with pytest.raises(ConfigError, match=r"changed: shrink"):
        build_bank(_recipe(dict(recipe_dict, shrink=True)), out, resume=True, progress=False, **fakes)
    assert build_bank(_recipe(recipe_dict), out, resume=True, progress=False, **fakes).ok
    marker = json.loads((out / "bank.json").read_text())
    assert [e["event"] for e in marker["history"]] == ["marker_added"] and "legacy" not in marker
