"""The type.json model: exact round-trip of the real reports, typed fields, and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from ld_augment.reports.model import (
    LesionReport, format_ct_value, load_reports, new_report, reports_from_type_json, reports_to_type_json,
    save_reports,
)

CASES = ["liver_cancer", "bladder_cancer"]


def _entry(**changes):
    attrs = {"enhancement status": "enhanced CT,", "lesion location": "5", "shape": "irregular,",
             "size": "[[28 29 26]] pixel,", "density": "low density lesion,", "density variations": "heterogeneous,",
             "CT value": "Mean density of the lesion region is approximately 57 HU,",
             "surface characteristics": "ill-defined margin,",
             "relationship with adjacent organs": "no close relationship with surrounding organs,",
             "specific features": ""}
    attrs.update(changes)
    return {"5": ["irregular,", "", attrs, [[[261, 179, 107]], [[28, 29, 26]]]]}


@pytest.mark.parametrize("case", CASES)
def test_real_reports_round_trip(shared_data: Path, tmp_path: Path, case: str) -> None:
    src = shared_data / "lesions" / case / "report.json"
    original = json.loads(src.read_text())
    reports = load_reports(src)
    assert reports_to_type_json(reports) == original
    out = save_reports(reports, tmp_path / "type.json")
    assert json.loads(out.read_text()) == original
    assert [r.to_entry() for r in load_reports(out)] == [r.to_entry() for r in reports]


def test_liver_typed_fields(shared_data: Path) -> None:
    (report,) = load_reports(shared_data / "lesions" / "liver_cancer" / "report.json")
    assert report.organ_id == 5 and report.lesion_location == "5"
    assert report.size == (28, 29, 26)
    assert report.ct_value == 57.0
    assert report.shape == "irregular" and report.shape_text == "irregular,"
    assert report.enhancement_status == "enhanced CT"
    assert report.density == "low density lesion" and report.density_variations == "heterogeneous"
    assert report.surface_characteristics == "ill-defined margin"
    assert report.relationship == "no close relationship with surrounding organs"
    assert report.specific_features == ["presence of increased density areas", "presence of decreased density areas"]
    assert report.cavity is None
    assert report.bbox_centers == [(261, 179, 107)] and report.bbox_sizes == [(28, 29, 26)]


def test_bladder_typed_fields(shared_data: Path) -> None:
    (report,) = load_reports(shared_data / "lesions" / "bladder_cancer" / "report.json")
    assert report.organ_id == 104
    assert report.size == (23, 18, 24)  # this file writes the size without a trailing comma
    assert report.ct_value == 35.0
    assert report.shape == "round-like,protrusion into the lumen"
    assert report.specific_features == []


def test_unknown_keys_and_extra_elements_are_kept(tmp_path: Path) -> None:
    data = _entry(**{"my note": "keep me"})
    data["5"].append({"future": [1, 2]})
    data["7"] = ["round-like,", "x", {"lesion location": "7", "shape": "round-like,"}, [[], []]]
    reports = reports_from_type_json(data)
    assert [r.organ_id for r in reports] == [5, 7]
    assert reports_to_type_json(reports) == data
    assert json.loads(save_reports(reports, tmp_path / "t.json").read_text()) == data


def test_ct_value_absent_and_decimal() -> None:
    data = _entry()
    del data["5"][2]["CT value"]
    assert reports_from_type_json(data)[0].ct_value is None
    assert reports_from_type_json(_entry(**{"CT value": "approximately -12.5 HU,"}))[0].ct_value == -12.5
    assert format_ct_value(57.0) == "Mean density of the lesion region is approximately 57 HU,"
    assert format_ct_value(35.25) == "Mean density of the lesion region is approximately 35.2 HU,"


def test_with_values_renders_the_original_format() -> None:
    report = reports_from_type_json(_entry())[0]
    new = report.with_values(size=np.array([10, 12, 9]), ct_value=40, specific_features=["spiculated margins"],
                             cavity="within the parenchymal organ", shape="round-like")
    assert new.attributes["size"] == "[[10 12 9]] pixel,"
    assert new.size == (10, 12, 9) and new.ct_value == 40.0
    assert new.attributes["specific features"] == "spiculated margins,"
    assert new.attributes["cavity"] == "within the parenchymal organ"
    assert new.shape_text == "round-like," and new.shape == "round-like"
    assert list(new.attributes)[-1] == "cavity"  # original key order, cavity last
    assert report.size == (28, 29, 26)  # the original object is unchanged
    assert "CT value" not in report.with_values(ct_value=None).attributes
    with pytest.raises(ConfigError, match="unknown report field"):
        report.with_values(colour="red")


def test_with_bboxes_pairs_centres_and_sizes() -> None:
    report = new_report(5, {"shape": "irregular"}, [(8, 8, 8), (6, 6, 6)])
    assert report.bbox_centers == [] and report.size == (8, 8, 8) and report.num_lesions == 2
    placed = report.with_bboxes([(1, 2, 3), (4, 5, 6)], [(7, 7, 7), (6, 6, 6)])
    assert placed.bbox_centers == [(1, 2, 3), (4, 5, 6)] and placed.size == (7, 7, 7)
    assert placed.to_entry()[3] == [[[1, 2, 3], [4, 5, 6]], [[7, 7, 7], [6, 6, 6]]]
    with pytest.raises(ConfigError, match="pair up"):
        report.with_bboxes([(1, 2, 3)], [])


def test_two_reports_for_one_organ_are_refused() -> None:
    report = reports_from_type_json(_entry())[0]
    with pytest.raises(ConfigError, match="two reports for organ 5"):
        reports_to_type_json([report, report])


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json {", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("{}", "no organ entry"),
        ('{"liver": ["", "", {}, [[], []]]}', "class id"),
        ('{"5": ["irregular,", "", {}]}', "expected a list"),
        ('{"5": ["irregular,", "", {"shape": 3}, [[], []]]}', "attribute name -> text"),
        ('{"5": ["irregular,", "", {}, [[[1, 2]], [[3, 4, 5]]]]}', "three integers"),
        ('{"5": ["irregular,", "", {}, [[[1, 2, 3]]]]}', "fourth element"),
        ('{"5": ["", "", {"size": "big"}, [[], []]]}', "size 'big'"),
        ('{"5": ["", "", {"CT value": "dark"}, [[], []]]}', "HU"),
        ('{"5": ["", "", {"lesion location": "6"}, [[], []]]}', "lesion location"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "type.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        load_reports(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_reports(tmp_path / "nope.json")


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    report = reports_from_type_json(_entry())[0]
    target = tmp_path / "sub" / "report.json"
    save_reports(report, target)
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
    assert isinstance(load_reports(target)[0], LesionReport)
