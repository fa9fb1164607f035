"""Recipe loading: every bad value fails at load time with the file, the key and the valid choices."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.plan import plan_build
from synthesis_bank.recipe import LLM, Recipe, load_recipe


def test_yaml_and_json_load_the_same_recipe(recipe_dict, write_recipe):
    a = load_recipe(write_recipe(recipe_dict, "r.json"))
    b = load_recipe(write_recipe(recipe_dict, "r.yaml"))
    assert a.to_dict() == b.to_dict()
    assert a.organs == {"liver": 1.0}
    assert a.lesion_types == pytest.approx({"liver tumor": 0.7, "liver cyst": 0.3})
    assert a.lesions_per_case == (1, 2) and a.variants_per_source == 2 and a.seed == 7
    assert a.label_scheme == {"background": 0, "organ": 1, "lesion": 2}
    assert a.attributes["density"] == pytest.approx({"hypodense lesion": 0.8, "isodense lesion": 0.2})


def test_relative_paths_resolve_against_the_recipe_folder(recipe_dict, ct_folder, tmp_path):
    data = dict(recipe_dict, sources={"folder": "cts", "segmentations": "segs"})
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert recipe.sources.path == ct_folder[0].resolve()


def test_unknown_key_lists_valid_keys_and_names_the_file(recipe_dict, write_recipe):
    path = write_recipe(dict(recipe_dict, variants=3))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and "'variants'" in str(err.value) and "variants_per_source" in str(err.value)


@pytest.mark.parametrize("key, value, fragment", [
    ("organs", ["livr"], "livr"),
    ("organs", [], "expected"),
    ("lesion_types", {"tumor": -1.0}, "positive"),
    ("lesion_types", {"tumor": 0}, "positive"),
    ("lesion_types", {"tumor": "a lot"}, "positive"),
    ("lesions_per_case", [3, 1], "min <= max"),
    ("lesions_per_case", 0, ">= 1"),
    ("variants_per_source", -2, ">= 1"),
    ("variants_per_source", 1.5, "integer"),
    ("seed", -1, ">= 0"),
    ("engine", {"mask": "magic"}, "procedural"),
    ("engine", {"texture": "procedural", "sampler": "ddim"}, "valid keys"),
    ("engine", {"checkpoints": {"lmnet": "x.ckpt"}}, "valid keys"),
    ("engine", {"mask": "diffusion", "mask_options": {"lightning_checkpoint": "missing.ckpt"}}, "not found"),
    ("engine", {"mask_options": ["checkpoint"]}, "mapping of engine options"),
    ("label_scheme", {"background": 0, "lesion": 2}, "consecutive"),
    ("label_scheme", {"background": 1, "lesion": 0}, "background: 0"),
    ("label_scheme", {"background": 0, "cancer": 1, "tumour": 2}, "would all be the bank's lesion class"),
    ("label_scheme", {"background": 0, "liver": 1}, "a lesion label"),
    ("label_scheme", {"background": 0, "ignore": 1, "lesion": 2}, "highest"),
    ("segmentation", "auto", "totalsegmentator"),
    ("report_writer", "gpt", "offline"),
    ("report_writer", {"llm": {"base_url": "http://x"}}, "base_url and model"),
    ("attributes", {"colour": "red"}, "colour"),
    ("attributes", {"density": "purple lesion"}, "purple"),
    ("attributes", {"density": LLM}, "llm"),
    ("attributes", {"density": {"choice": {"hypodense lesion": 1}}}, "choices"),
    ("spacing", [1, 1], "three positive"),
    ("shrink", "yes", "true or false"),
    ("dataset_name", "my bank", "letters"),
    ("dataset_id", 1000, "1..999"),
])
def test_bad_values_are_rejected_with_the_key(recipe_dict, write_recipe, key, value, fragment):
    path = write_recipe(dict(recipe_dict, **{key: value}))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and key in message and fragment.lower() in message.lower(), message


def test_missing_files_are_rejected(recipe_dict, write_recipe, tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    data = dict(recipe_dict, sources={"folder": str(tmp_path / "no_cts")})
    with pytest.raises(ConfigError, match="folder not found"):
        load_recipe(write_recipe(data))
    data = dict(recipe_dict, sources={"nnunet_raw": str(tmp_path)})
    with pytest.raises(ConfigError, match="imagesTr"):
        load_recipe(write_recipe(data))


def test_sources_need_exactly_one_kind(recipe_dict, write_recipe, ct_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("")
    data = dict(recipe_dict, sources={"folder": str(ct_folder[0]), "list_file": str(listing)})
    with pytest.raises(ConfigError, match="exactly one"):
        load_recipe(write_recipe(data))


def test_list_file_with_a_missing_ct_fails_before_building(recipe_dict, write_recipe, ct_folder, tmp_path):
    cts, segs = ct_folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"# cases\n{cts / 'case_a.nii.gz'},{segs / 'case_a.nii.gz'}\n{tmp_path / 'ghost.nii.gz'}\n")
    recipe = load_recipe(write_recipe(dict(recipe_dict, sources={"list_file": str(listing)})))
    with pytest.raises(ConfigError, match=r"list\.txt:3: file not found"):
        plan_build(recipe)


def test_segmentation_error_mode_requires_segmentations(recipe_dict, write_recipe, ct_folder):
    data = dict(recipe_dict, sources={"folder": str(ct_folder[0])}, segmentation="error")
    with pytest.raises(ConfigError, match="no organ segmentation"):
        plan_build(load_recipe(write_recipe(data)))


def test_region_based_nnunet_sources_are_refused(recipe_dict, write_recipe, nnunet_raw):
    root, segs = nnunet_raw
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "liver": [1, 2], "tumor": 2}
    (root / "dataset.json").write_text(json.dumps(ds))
    data = dict(recipe_dict, sources={"nnunet_raw": str(root), "segmentations": str(segs)})
    with pytest.raises(ConfigError, match="region-based"):
        plan_build(load_recipe(write_recipe(data)))


def test_from_dict_does_not_mutate_its_input(recipe_dict):
    before = copy.deepcopy(recipe_dict)
    Recipe.from_dict(recipe_dict, base_dir=Path("/"))
    assert recipe_dict == before


def test_label_scheme_may_use_the_targets_names(recipe_dict, write_recipe):
    """MSD-like {background, liver, cancer}: roles by name, dataset.json keeps the recipe's names."""
    recipe = load_recipe(write_recipe(dict(recipe_dict, label_scheme={"background": 0, "liver": 1, "cancer": 2}),
                                      "r.yaml"))
    assert recipe.label_scheme == {"background": 0, "organ": 1, "lesion": 2}
    assert recipe.dataset_labels() == {"background": 0, "liver": 1, "cancer": 2}
    assert recipe.to_dict()["label_scheme"] == {"background": 0, "liver": 1, "cancer": 2}
    kidney = load_recipe(write_recipe(dict(recipe_dict, label_scheme={"background": 0, "kidney": 1, "tumor": 2,
                                                                      "ignore": 3}), "k.yaml"))
    assert kidney.label_scheme == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
