"""Issue 12 cases 3, 5, 6, 7: recipes cannot enable pickle, engine options and devices are checked when the
recipe loads, lesion counts are bounded, an invalid-UTF-8 recipe is one line and exit 2."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.builder import build_bank
from synthesis_bank.cli import main
from synthesis_bank.manifest import read_manifest
from synthesis_bank.recipe import Recipe, load_recipe


class _Payload:
    """Unpickling this runs open(path, "w"): the file appearing proves the pickle's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    proof = tmp_path / "pwned"
    ckpt = tmp_path / "LMNet.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": _Payload(proof)}, ckpt)
    return ckpt, proof


def _diffusion_recipe(recipe_dict, ckpt: Path, **extra) -> dict:
    options = {"lightning_checkpoint": str(ckpt), "encoder": "vocab", **extra}
    return dict(recipe_dict, engine={"mask": "diffusion", "texture": "procedural", "mask_options": options})


def test_recipe_allow_pickle_is_refused_and_payload_not_run(recipe_dict, evil_checkpoint, write_recipe, capsys):
    ckpt, proof = evil_checkpoint
    path = write_recipe(_diffusion_recipe(recipe_dict, ckpt, allow_pickle=True), name="shared.yaml")
    with pytest.raises(ConfigError, match=r"engine\.mask_options\.allow_pickle': not allowed in a recipe.*--allow-pickle"):
        load_recipe(path)
    assert main(["build", "--recipe", str(path), "--out", str(path.parent / "bank"), "--no-progress"]) == 2
    assert "allow_pickle" in capsys.readouterr().err
    assert not proof.exists()


def test_checkpoint_payload_runs_only_with_the_cli_flag(recipe_dict, evil_checkpoint, tmp_path, fakes):
    ckpt, proof = evil_checkpoint
    recipe = Recipe.from_dict(_diffusion_recipe(recipe_dict, ckpt), base_dir=tmp_path)
    summary = build_bank(recipe, tmp_path / "bank", progress=False, **fakes)
    assert summary.stopped and "weights_only" in summary.stopped  # refused, the build stops once
    assert not proof.exists()

    trusted = build_bank(recipe, tmp_path / "bank2", progress=False, allow_pickle=True, **fakes)
    assert proof.exists()  # the same file with the person's flag: the test's payload is real
    assert json.loads((tmp_path / "bank2" / "bank.json").read_text())["allow_pickle"] is True
    assert all(e.get("allow_pickle") is True for e in read_manifest(tmp_path / "bank2" / "manifest.jsonl"))
    assert trusted.stopped  # the toy checkpoint holds no network; what matters is who enabled pickle


@pytest.mark.parametrize("engine, problem", [
    ({"mask_options": {"punctate_max_mm": 5, "banana": 1}}, r"unknown option\(s\) \['banana'\] for the mask engine"),
    ({"mask_options": {"punctate_max_mm": "five"}}, r"punctate_max_mm': expected a number"),
    ({"mask_options": {"wall_thickness_mm": [3]}}, r"wall_thickness_mm': expected a list of 2 numbers"),
    ({"texture_options": {"neighbourhood_mm": True}}, r"neighbourhood_mm': expected a number"),
    ({"device": "banana"}, r"engine\.device': expected 'cpu', 'cuda' or 'cuda:N', got 'banana'"),
    ({"mask": "diffusion", "mask_options": {"steps": 2.5, "encoder": "vocab"}}, r"steps': expected an integer"),
    ({"mask": "diffusion", "mask_options": {"device": "gpu0", "encoder": "vocab"}}, r"device': expected 'cpu'"),
])
def test_engine_options_checked_at_load(recipe_dict, engine, problem):
    with pytest.raises(ConfigError, match=problem):
        Recipe.from_dict(dict(recipe_dict, engine=engine), origin="r.yaml")


def test_valid_engine_options_load(recipe_dict):
    recipe = Recipe.from_dict(dict(recipe_dict, engine={
        "device": "cuda:1", "mask_options": {"punctate_max_mm": 8, "wall_thickness_mm": [2, 10.5]},
        "texture_options": {"neighbourhood_mm": 20}}))
    assert recipe.engine.device == "cuda:1" and recipe.engine.mask_options["wall_thickness_mm"] == [2, 10.5]


@pytest.mark.parametrize("value", [100000, [1, 100000], 51])
def test_lesions_per_case_is_bounded(recipe_dict, value):
    with pytest.raises(ConfigError, match=r"lesions_per_case': at most 50 lesions per case"):
        Recipe.from_dict(dict(recipe_dict, lesions_per_case=value))


def test_llm_timeout_and_retries_in_recipe(recipe_dict):
    recipe = Recipe.from_dict(dict(recipe_dict, report_writer={"llm": {"base_url": "http://x", "model": "m",
                                                                          "timeout_s": 5, "max_retries": 0}}))
    assert (recipe.report_writer.timeout_s, recipe.report_writer.max_retries) == (5.0, 0)
    with pytest.raises(ConfigError, match="timeout_s"):
        Recipe.from_dict(dict(recipe_dict, report_writer={"llm": {"base_url": "http://x", "model": "m",
                                                                    "timeout_s": 0}}))


def test_invalid_utf8_recipe_is_one_line_exit_two(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"organs: [liver]\nlesion_types: \xff\xfe cyst\n")
    assert main(["build", "--recipe", str(recipe), "--out", str(tmp_path / "bank"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a UTF-8 text file" in err and str(recipe) in err
    assert not (tmp_path / "bank").exists()


def test_factory_with_kwargs_takes_any_option(recipe_dict, monkeypatch):
    from ld_augment.engines import registry

    monkeypatch.setitem(registry.MASK_ENGINES, "custom", lambda *, size=3, **rest: None)
    recipe = Recipe.from_dict(dict(recipe_dict, engine={"mask": "custom", "mask_options": {"size": 4, "anything": 1}}))
    assert recipe.engine.mask_options == {"size": 4, "anything": 1}
    with pytest.raises(ConfigError, match="size': expected an integer"):
        Recipe.from_dict(dict(recipe_dict, engine={"mask": "custom", "mask_options": {"size": "big"}}))


@pytest.mark.parametrize("name, text", [("r.yaml", "organs: [liver\nsecret-token-xyz: 1\n"),
                                        ("r.json", '{"organs": ["liver"], secret-token-xyz}')])
def test_unparseable_recipe_is_one_line_without_its_text(tmp_path, capsys, name, text):
    recipe = tmp_path / name
    recipe.write_text(text)
    assert main(["build", "--recipe", str(recipe), "--out", str(tmp_path / "bank"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot parse recipe" in err and "(line " in err
    assert "secret-token" not in err
