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
        "within the parenchymal organ,",  # with the trailing comma training saw
    ]


def test_lmnet_drops_empty_specific_features_and_keeps_a_given_cavity(shared_data: Path) -> None:
    (report,) = load_reports(shared_data / "lesions" / "bladder_cancer" / "report.json")
    attrs = conditioning_attributes(report, purpose="lmnet", organ_name="urinary bladder")
    assert "specific features" not in attrs
    assert attrs["cavity"] == default_cavity("urinary_bladder") + ","  # the registry's default, as placement uses
    lumen = report.with_values(cavity="within the lumen of a hollow organ")
    assert conditioning_texts(lumen, purpose="lmnet")[-1] == "within the lumen of a hollow organ,"
    assert conditioning_texts(lumen, purpose="lmnet")[1] == "urinary bladder"  # the original's organ text


def test_released_cavity_text_is_the_released_configs_rule(shared_data: Path) -> None:
    # seg == coarseg in the released test config: solid organs always read "protruding ...,"
    liver = _liver(shared_data).with_values(cavity="within the parenchymal organ")
    assert conditioning_texts(liver, purpose="lmnet", cavity_text="released")[-1] == \
        "protruding from the parenchymal organ,"
    assert conditioning_texts(liver, purpose="lmnet", cavity_text="report")[-1] == "within the parenchymal organ,"
    (bladder,) = load_reports(shared_data / "lesions" / "bladder_cancer" / "report.json")
    lumen = bladder.with_values(cavity="within the lumen of a hollow organ")
    assert conditioning_texts(lumen, purpose="lmnet", cavity_text="released")[-1] == "wall thickening,"
    stone = bladder.with_values(specific_features=["bladder stone"])
    assert conditioning_texts(stone, purpose="lmnet", cavity_text="released")[-1] == \
        "within the lumen of a hollow organ,"
    with pytest.raises(ConfigError, match="cavity_text"):
        conditioning_texts(liver, purpose="lmnet", cavity_text="paper")  # type: ignore[arg-type]


def test_released_text_matches_the_original_inference(reference_data: Path) -> None:
    import gzip
    import io

    import torch

    folder = reference_data / "lmnet_selection"
    for case, path in (("case01", "liver/liver_cancer/case01"), ("case02", "kidney/kidney_tumor/case02"),
                       ("case03", "stomach/gastric_cancer/case03")):
        calls = torch.load(io.BytesIO(gzip.decompress((folder / f"{case}_calls.pt.gz").read_bytes())),
                           weights_only=True)["calls"]
        reports = load_reports(folder / "inputs" / path / "type.json")
        produced = [list(conditioning_attributes(r, purpose="lmnet", cavity_text="released").items())
                    for r in reports]
        for call in calls:
            assert list(call["text"][0].items()) in produced  # same keys, same order, same strings


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
