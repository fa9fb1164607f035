"""Vocabulary normalization: synonyms to canonical values, multi-valued items, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from ld_augment.reports.model import load_reports, reports_from_type_json
from ld_augment.reports.vocabulary import canonical_attribute, load_vocabulary, normalize_report
from ld_augment.resources import load_json_resource


def test_every_synonym_maps_to_the_first_entry_of_its_group() -> None:
    vocab = load_vocabulary()
    raw = load_json_resource("vocab", "attribute_vocabulary.json")
    for attribute, groups in raw.items():
        for group in groups:
            canonical = group[0].strip().rstrip(",")
            for synonym in group:
                assert vocab.normalize_items(attribute, synonym) == [canonical], (attribute, synonym)


@pytest.mark.parametrize(
    "attribute, value, expected",
    [
        ("density", "  Low   Density Lesion,,", "hypodense lesion"),
        ("density", "hypodense", "hypodense lesion"),
        ("enhancement status", "Enhanced CT,", "enhanced ct"),
        ("cavity", "Wall Thickening", "wall thickening"),
        ("specific features", "calculus", "stone"),
    ],
)
def test_case_whitespace_and_trailing_commas_are_ignored(attribute: str, value: str, expected: str) -> None:
    assert load_vocabulary().normalize_items(attribute, value) == [expected]


def test_multi_valued_items_are_normalized_one_by_one() -> None:
    vocab = load_vocabulary()
    assert vocab.normalize_items("shape", "round-like,protrusion into the lumen,") == [
        "round-like", "protrusion into the lumen"]
    assert vocab.normalize_items("shape", "Nodular , round-like, nodular") == ["punctate", "round-like"]
    # a vocabulary value containing a comma is matched as one item (longest run first)
    assert vocab.normalize_items("shape", "irregular, wall thickening") == ["irregular wall thickening"]
    both = "presence of increased attenuation areas, presence of decreased attenuation areas"
    assert vocab.normalize_items("specific features", both + ",") == [both]
    assert vocab.normalize_items("specific features", "presence of increased density areas,"
                                 "presence of decreased attenuation areas,") == [
        "presence of increased density areas", "presence of decreased density areas"]
    assert vocab.normalize_items("specific features", "") == []
    assert vocab.normalize_text("specific features", ["calculus", "spiculated margins"]) == "stone,spiculated margins,"


def test_unknown_value_names_the_attribute_and_lists_the_allowed_values() -> None:
    vocab = load_vocabulary()
    with pytest.raises(ConfigError) as info:
        vocab.canonical("density variations", "speckled")
    message = str(info.value)
    assert "'speckled'" in message and "'density variations'" in message
    assert "'homogeneous'" in message and "'heterogeneous'" in message
    with pytest.raises(ConfigError, match=r"'triangle'.*'shape'.*'round-like'"):
        vocab.normalize_items("shape", "round-like,triangle")
    with pytest.raises(ConfigError, match="within the parenchymal organ"):
        vocab.normalize_items("cavity", "floating")
    with pytest.raises(ConfigError, match="no vocabulary"):
        vocab.allowed("colour")


def test_single_valued_attribute_rejects_a_list() -> None:
    with pytest.raises(ConfigError, match="density variations"):
        load_vocabulary().normalize_items("density variations", "homogeneous,heterogeneous")


def test_attribute_names() -> None:
    assert canonical_attribute("density_variations") == "density variations"
    assert canonical_attribute("CT-value") == "CT value"
    assert canonical_attribute("relationship") == "relationship with adjacent organs"
    with pytest.raises(ConfigError, match="settable attributes"):
        canonical_attribute("lesion location")


@pytest.mark.parametrize("case", ["liver_cancer", "bladder_cancer"])
def test_real_reports_normalize_and_stay_stable(shared_data: Path, case: str) -> None:
    (report,) = load_reports(shared_data / "lesions" / case / "report.json")
    normalized = normalize_report(report)
    assert normalize_report(normalized) == normalized  # idempotent
    assert normalized.size == report.size and normalized.ct_value == report.ct_value
    assert normalized.bbox_centers == report.bbox_centers
    assert normalized.attributes["enhancement status"] == "enhanced ct,"
    if case == "liver_cancer":
        assert normalized.density == "hypodense lesion"  # "low density lesion" is a synonym
    else:
        assert normalized.shape_text == "round-like,protrusion into the lumen,"


def test_normalize_report_keeps_unknown_keys_and_rejects_bad_values() -> None:
    entry = ["", "", {"lesion location": "5", "density": "hyperattenuating lesion,", "my key": "free text"}, [[], []]]
    report = normalize_report(reports_from_type_json({"5": entry})[0])
    assert report.attributes == {"lesion location": "5", "density": "hyperdense lesion,", "my key": "free text"}
    entry[2]["density"] = "glowing"
    with pytest.raises(ConfigError, match="glowing"):
        normalize_report(reports_from_type_json({"5": entry})[0])
