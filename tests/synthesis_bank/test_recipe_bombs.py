"""Issue 22 (memory bombs in recipes, list files and plans): each is refused before it can allocate.

The probes: a YAML "billion laughs" under lesions_per_case reached 2.6 GB (and the error repr()'d the expanded
value); duplicate keys silently took the last value (a liver recipe became a spleen bank);
`variants_per_source: 1000000000000` was planned eagerly (1.8 GB after 120 s).
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from ld_augment.errors import ConfigError, brief
from synthesis_bank.cli import main
from synthesis_bank.plan import MAX_PLAN_ITEMS, plan_build
from synthesis_bank.recipe import MAX_VARIANTS_PER_SOURCE, Recipe, load_recipe
from synthesis_bank.sources import enumerate_sources

LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                      f"*{chr(97 + i)}]" for i in range(8)])


def _yaml_recipe(tmp_path: Path, recipe_dict: dict, extra: str) -> Path:
    """The valid recipe as YAML (flow style, one key per line) plus `extra` lines."""
    lines = [f"{key}: {json.dumps(value)}" for key, value in recipe_dict.items()]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n" + extra + "\n", encoding="utf-8")
    return path


def _bounded(func, *args, match: str, max_mb: float = 30.0):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=match) as err:
            func(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10 and peak < max_mb * 2**20, (time.perf_counter() - t0, peak)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600
    return message


def test_billion_laughs_is_refused_at_the_first_anchor(tmp_path, recipe_dict):
    recipe_dict = dict(recipe_dict)
    recipe_dict.pop("lesions_per_case")
    path = _yaml_recipe(tmp_path, recipe_dict, LAUGHS.replace("i: &i", "lesions_per_case: &i"))
    message = _bounded(load_recipe, path, match="anchors and aliases are not accepted")
    assert str(path) in message and "(line " in message


def test_an_alias_alone_is_refused_too(tmp_path, recipe_dict):
    path = tmp_path / "r.yaml"
    path.write_text("organs: &o [liver]\nlesion_types: {cyst: 1}\nsources: {folder: x}\nextra: *o\n")
    _bounded(load_recipe, path, match="YAML anchor")


@pytest.mark.parametrize("name", ["recipe.yaml", "recipe.json"])
def test_duplicate_keys_are_refused_with_their_line(tmp_path, recipe_dict, name):
    path = tmp_path / name
    if name.endswith(".yaml"):
        _yaml_recipe(tmp_path, recipe_dict, 'organs: ["spleen"]')
        path = tmp_path / "recipe.yaml"
        message = _bounded(load_recipe, path, match="duplicate key 'organs' on line")
        assert "first on line 2" in message
    else:
        text = json.dumps(recipe_dict)[:-1] + ', "organs": ["spleen"]}'
        path.write_text(text)
        _bounded(load_recipe, path, match="duplicate key 'organs'")


def test_nested_duplicate_keys_are_refused(tmp_path, recipe_dict):
    path = _yaml_recipe(tmp_path, {k: v for k, v in recipe_dict.items() if k != "attributes"},
                        "attributes:\n  density: hypodense lesion\n  density: hyperdense lesion")
    _bounded(load_recipe, path, match="duplicate key 'density'")


def test_a_valid_yaml_recipe_still_loads(tmp_path, recipe_dict):
    recipe = load_recipe(_yaml_recipe(tmp_path, recipe_dict, "# a comment"))
    assert recipe.organs == {"liver": 1.0} and recipe.variants_per_source == 2


def test_oversized_recipe_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:
        fh.truncate(3 << 30)  # a sparse 3 GB file: a mistyped --recipe pointing at a CT or a log
    message = _bounded(load_recipe, path, match="at most 1 MB", max_mb=2)
    assert str(path) in message


def test_huge_values_are_never_repr_d_whole(recipe_dict):
    scheme = {"background": 0, "lesion": 1, **{f"type {i}": i + 2 for i in range(100_000)}}  # 100 000 class names
    message = _bounded(Recipe.from_dict, dict(recipe_dict, label_scheme=scheme), match="100002 class names")
    assert "type 0" in message and "type 99999" not in message
    assert len(brief("x" * 10**6)) <= 120


def test_variants_per_source_is_bounded_at_validation(recipe_dict):
    message = _bounded(Recipe.from_dict, dict(recipe_dict, variants_per_source=1_000_000_000_000),
                       match=f"at most {MAX_VARIANTS_PER_SOURCE}")
    assert "variants_per_source" in message


def test_plan_size_is_counted_before_planning(recipe_dict, monkeypatch):
    import synthesis_bank.plan as plan

    recipe = Recipe.from_dict(dict(recipe_dict, variants_per_source=3))
    sources = enumerate_sources(recipe)
    monkeypatch.setattr(plan, "MAX_PLAN_ITEMS", len(sources) * 3 - 1)
    monkeypatch.setattr(plan, "plan_item", lambda *a: pytest.fail("planned before counting"))
    with pytest.raises(ConfigError, match=f"= {len(sources) * 3} cases; a build plans at most"):
        plan_build(recipe, sources)
    assert MAX_PLAN_ITEMS >= MAX_VARIANTS_PER_SOURCE


def test_cli_refuses_the_bombs_with_exit_two(tmp_path, recipe_dict, capsys):
    path = _yaml_recipe(tmp_path, recipe_dict, "x: &x [1, 2]\ny: *x")
    assert main(["build", "--recipe", str(path), "--out", str(tmp_path / "bank"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "anchors" in err
    assert not (tmp_path / "bank").exists()


def test_oversized_list_file_is_refused(tmp_path, recipe_dict):
    listing = tmp_path / "cases.txt"
    with open(listing, "wb") as fh:
        fh.truncate(1 << 30)
    recipe = Recipe.from_dict(dict(recipe_dict, sources={"list_file": str(listing)}))
    _bounded(enumerate_sources, recipe, match="list file .* is 1024.0 MB", max_mb=2)


def test_cli_list_file_is_bounded(tmp_path):
    from ld_augment.cli.common import read_list_file

    listing = tmp_path / "list.txt"
    with open(listing, "wb") as fh:
        fh.truncate(1 << 30)
    _bounded(read_list_file, listing, match="at most 32 MB", max_mb=2)
