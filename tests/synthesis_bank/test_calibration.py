"""Recipe `calibrate_from`: validated at load, measured once per build, recorded in the manifest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.builder import build_bank
from synthesis_bank.calibration import measure, parse_spec
from synthesis_bank.case_runner import make_report_writer
from synthesis_bank.manifest import read_manifest
from synthesis_bank.recipe import Recipe

FAKES = Path(__file__).resolve().parent.parent / "evaluation" / "fake_datasets.py"


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("ld_eval_fake_datasets_cal", FAKES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_dataset(tmp_path_factory.mktemp("real") / "Dataset010_Real", kind="ball", n_cases=3)


def test_recipe_validates_calibrate_from(recipe_dict, real_dataset, tmp_path) -> None:
    recipe = Recipe.from_dict(dict(recipe_dict, calibrate_from={"dataset": str(real_dataset), "organ": "liver",
                                                                "lesion_label": "tumor"}), base_dir=Path("/"))
    assert recipe.calibrate_from.dataset == real_dataset.resolve()
    assert recipe.to_dict()["calibrate_from"]["organ"] == "liver"
    assert "calibrate_from" not in Recipe.from_dict(recipe_dict, base_dir=Path("/")).to_dict()  # old hashes hold
    with pytest.raises(ConfigError, match="calibrate_from.*folder not found"):
        Recipe.from_dict(dict(recipe_dict, calibrate_from=str(tmp_path / "nope")), base_dir=Path("/"))
    with pytest.raises(ConfigError, match="calibrate_from.*neither"):
        Recipe.from_dict(dict(recipe_dict, calibrate_from=str(tmp_path)), base_dir=Path("/"))
    with pytest.raises(ConfigError, match="unknown key"):
        Recipe.from_dict(dict(recipe_dict, calibrate_from={"dataset": str(real_dataset), "labels": 2}), base_dir=Path("/"))
    llm = dict(recipe_dict, report_writer={"llm": {"base_url": "http://x", "model": "m"}}, calibrate_from=str(real_dataset))
    with pytest.raises(ConfigError, match="LLM"):
        Recipe.from_dict(llm, base_dir=Path("/"))


def test_measure_gives_the_real_lesions(real_dataset) -> None:
    lesions = measure(parse_spec(str(real_dataset), base=Path("/"), origin="r"), (1.5, 1.5, 1.5))
    rows = lesions["*|*"]
    assert 3 <= len(rows) <= 6
    assert all(6.0 <= r["diameter_mm"] <= 16.0 and r["contrast_hu"] < -25 for r in rows)


def test_build_draws_from_real_lesions_and_records_it(recipe_dict, real_dataset, tmp_path, fakes) -> None:
    recipe = Recipe.from_dict(dict(recipe_dict, calibrate_from=str(real_dataset), variants_per_source=1),
                              base_dir=Path("/"))
    writer = make_report_writer(recipe)
    assert writer.name == "calibrated" and writer.provenance()["lesions"]["*|*"]["n"] >= 3
    out = tmp_path / "Dataset502_Calibrated"
    summary = build_bank(recipe, out, progress=False, **fakes)
    assert summary.ok
    entries = read_manifest(out / "manifest.jsonl")
    assert entries and all(e["calibration"]["source"] == str(real_dataset.resolve()) for e in entries)
