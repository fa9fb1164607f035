"""The conditioning text: which attribute strings LMNet and LINet see, in which order."""

from __future__ import annotations

from pathlib import Path

import pytest

from ld_augment.errors import ConfigError
from ld_augment.organs.registry import default_cavity
from ld_augment.reports.conditioning import conditioning_attributes, conditioning_texts
from ld_augment.reports.model import load_reports, reports_from_type_json


def _liver(shared_data: Path):
    return load_reports(shared_data / "lesions" / "liver_cancer" / "report.json")[0]


def test_lmnet_drops_intensity_and_size_and_adds_the_cavity(shared_data: Path) -> None:
    report = _liver(shared_data)
    assert conditioning_texts(report, purpose="lmnet", organ_name="liver") == [
        "enhanced CT,", "liver", "irregular,", "ill-defined margin,",
        "no close relationship with surrounding organs,",
        "presence of increased density areas,presence of decreased density areas,",
        "within the parenchymal organ",
    ]


def test_lmnet_drops_empty_specific_features_and_keeps_a_given_cavity(shared_data: Path) -> None:
    (report,) = load_reports(shared_data / "lesions" / "bladder_cancer" / "report.json")
    attrs = conditioning_attributes(report, purpose="lmnet", organ_name="urinary bladder")
    assert "specific features" not in attrs
    assert attrs["cavity"] == default_cavity("urinary_bladder")  # the registry's default, as placement uses
    lumen = report.with_values(cavity="within the lumen of a hollow organ")
    assert conditioning_texts(lumen, purpose="lmnet")[-1] == "within the lumen of a hollow organ"
    assert conditioning_texts(lumen, purpose="lmnet")[1] == "urinary bladder"  # the original's organ text


def test_linet_drops_only_size(shared_data: Path) -> None:
    report = _liver(shared_data)
    texts = conditioning_texts(report, purpose="linet", organ_name="liver")
    expected = [v for k, v in report.attributes.items() if k != "size"]
    expected[1] = "liver"
    assert texts == expected
    assert "Mean density of the lesion region is approximately 57 HU," in texts


def test_all_keeps_every_attribute_and_defaults_the_organ_name(shared_data: Path) -> None:
    report = _liver(shared_data)
    texts = conditioning_texts(report, purpose="all")
    assert len(texts) == len(report.attributes) and texts[1] == "liver"
    assert texts[3] == "[[28 29 26]] pixel,"


def test_unknown_purpose() -> None:
    report = reports_from_type_json({"5": ["", "", {"lesion location": "5"}, [[], []]]})[0]
    with pytest.raises(ConfigError, match="lmnet"):
        conditioning_texts(report, purpose="vae", organ_name="liver")  # type: ignore[arg-type]
