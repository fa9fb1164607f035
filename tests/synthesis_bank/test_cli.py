"""The CLI parses, calls the package's functions and maps outcomes to exit codes (0 ok, 1 failed cases, 2 error)."""

from __future__ import annotations

import argparse
import json

import pytest

import synthesis_bank.builder as builder
from synthesis_bank.cli import add_bank_parsers, main


@pytest.fixture
def fake_pipeline(monkeypatch, bank_fakes):
    monkeypatch.setattr(builder, "_default_pipeline", lambda: (bank_fakes.fake_preprocess, bank_fakes.fake_synthesize))


def test_build_then_resume_exit_zero(fake_pipeline, recipe_dict, write_recipe, tmp_path, capsys):
    recipe = write_recipe(dict(recipe_dict, variants_per_source=1))
    out = tmp_path / "bank"
    assert main(["build", "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert "synthesized" in capsys.readouterr().out
    assert main(["build", "--recipe", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3


def test_failed_case_gives_exit_one(fake_pipeline, recipe_dict, write_recipe, ct_folder, tmp_path, capsys):
    (ct_folder[0] / "case_a.nii.gz").write_bytes(b"junk")
    recipe = write_recipe(recipe_dict)
    assert main(["build", "--recipe", str(recipe), "--out", str(tmp_path / "b"), "--no-progress"]) == 1
    assert "case_a_syn000" in capsys.readouterr().out


def test_config_error_gives_exit_two(recipe_dict, write_recipe, tmp_path, capsys):
    recipe = write_recipe(dict(recipe_dict, organs=["spleeen"]))
    assert main(["build", "--recipe", str(recipe), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "spleeen" in capsys.readouterr().err


def test_bad_shard_is_a_usage_error(recipe_dict, write_recipe, tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["build", "--recipe", str(write_recipe(recipe_dict)), "--out", str(tmp_path), "--shard", "3/3"])
    assert err.value.code == 2


def test_sharded_build_and_merge(fake_pipeline, recipe_dict, write_recipe, tmp_path):
    recipe, out = write_recipe(recipe_dict), tmp_path / "bank"
    for i in range(2):
        assert main(["build", "--recipe", str(recipe), "--out", str(out), "--shard", f"{i}/2", "--no-progress"]) == 0
    assert main(["merge", str(out)]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6


def test_commands_mount_under_another_parser():
    parser = argparse.ArgumentParser(prog="ld-augment bank")
    add_bank_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build", "--recipe", "r.yaml", "--out", "o", "--shard", "1/2"])
    assert args.shard == (1, 2) and callable(args.func)
    assert callable(parser.parse_args(["merge", "o"]).func)
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - the registered subcommands
    assert {"build", "merge", "prepare"} <= set(choices)
