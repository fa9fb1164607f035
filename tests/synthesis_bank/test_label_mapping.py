"""Every mapping rule and error of synthesis_bank.label_mapping, region values checked with nnU-Net's LabelManager."""

from __future__ import annotations

import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from synthesis_bank.label_mapping import (TargetLabels, is_lesion_name, lesion_kind, names_organ, parse_label_args,
                                          remap, required_fills, resolve_mapping)

BANK = {"background": 0, "organ": 1, "lesion": 2}
TASK03 = {"background": 0, "liver": 1, "cancer": 2}
PANCREAS = {"background": 0, "pancreas": 1, "cancer": 2}
KITS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}


def _pair(mapping, organ, lesion_type):
    return mapping.per_pair[(organ, lesion_type)]


@pytest.mark.parametrize("target,organ,organ_name,organ_value", [(TASK03, "liver", "liver", 1),
                                                                 (PANCREAS, "pancreas", "pancreas", 1)])
def test_msd_targets_map_by_name(target, organ, organ_name, organ_value):
    m = resolve_mapping(BANK, target, [(organ, "metastasis")])
    res = _pair(m, organ, "metastasis")
    assert (res["organ"].target, res["organ"].value, res["organ"].rule) == (organ_name, organ_value, "by name")
    assert (res["lesion"].target, res["lesion"].value) == ("cancer", 2)
    assert m.lut_for(organ, "metastasis") == {0: 0, 1: organ_value, 2: 2}


def test_same_names_map_one_to_one():
    m = resolve_mapping(BANK, BANK, [(None, None), ("liver", "cyst")])
    for pair in m.per_pair.values():
        assert {c: (r.value, r.rule) for c, r in pair.items()} == {"organ": (1, "same name"),
                                                                   "lesion": (2, "same name")}
    assert m.is_identity(m.lut_for("liver", "cyst"))


def test_organ_synonyms_and_sides():
    assert names_organ("liver", "liver") and names_organ("Hepatic", "liver")
    assert names_organ("kidney", "kidney_left") and names_organ("renal", "kidney_right")
    assert not names_organ("kidney", "liver") and not names_organ("liver_tumor", "liver")
    assert is_lesion_name("liver_tumor") and is_lesion_name("Masses") and is_lesion_name("carcinoma")
    assert not is_lesion_name("liver") and not is_lesion_name("kidney")


def test_region_values_are_what_nnunet_converts_back():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    kits = TargetLabels(KITS)
    assert kits.region_based and (kits.value_of("kidney"), kits.value_of("masses"), kits.value_of("tumor")) == (1, 3, 2)
    lm = LabelManager(KITS, regions_class_order=[1, 3, 2])
    regions = lm.foreground_regions                       # what training targets are built from (isin per region)
    for name in ("kidney", "masses", "tumor"):
        value = kits.value_of(name)
        probs = np.array([float(value in np.atleast_1d(r)) for r in regions]).reshape(-1, 1, 1, 1)
        # nnU-Net's own conversion from region outputs back to a label map gives the value we wrote
        assert int(lm.convert_probabilities_to_segmentation(probs)[0, 0, 0]) == value, name


def test_kits_malignant_goes_to_tumor_benign_needs_the_users_word():
    m = resolve_mapping(BANK, KITS, [("kidney_left", "renal cell carcinoma")])      # masses is not a tumour label
    assert m.lut_for("kidney_left", "renal cell carcinoma") == {0: 0, 1: 1, 2: 2}
    with pytest.raises(ConfigError, match=r"lesion type 'cyst' has no stated label .*benign") as err:
        resolve_mapping(BANK, KITS, [("kidney_left", "renal cell carcinoma"), ("kidney_right", "cyst")])
    assert "['kidney', 'masses', 'tumor']" in str(err.value) and "['cyst', 'renal cell carcinoma']" in str(err.value)
    assert "--lesion-map cyst=<label>" in str(err.value)
    m = resolve_mapping(BANK, KITS, [("kidney_left", "renal cell carcinoma"), ("kidney_right", "cyst")],
                        parse_label_args(["cyst=masses"], origin="--lesion-map"))
    assert m.lut_for("kidney_left", "renal cell carcinoma") == {0: 0, 1: 1, 2: 2}
    assert m.lut_for("kidney_right", "cyst") == {0: 0, 1: 1, 2: 3}
    assert _pair(m, "kidney_right", "cyst")["lesion"].rule == "--labels cyst=masses"
    described = m.describe()
    assert described["region_based"] and len(described["pairs"]) == 2


def test_a_cyst_is_never_guessed_to_be_cancer():
    with pytest.raises(ConfigError, match="a cyst is not a cancer"):
        resolve_mapping(BANK, TASK03, [("liver", "cyst")])
    with pytest.raises(ConfigError, match="neither a known malignant nor a known benign"):
        resolve_mapping(BANK, TASK03, [("liver", "nodule")])
    assert resolve_mapping(BANK, TASK03, [("liver", "cyst")], {"cyst": "cancer"}).lut_for("liver", "cyst")[2] == 2
    assert resolve_mapping(BANK, {**TASK03, "cyst": 3}, [("liver", "cyst")]).lut_for("liver", "cyst")[2] == 3
    for malignant in ("hepatocellular carcinoma", "metastasis", "adenocarcinoma", "renal cell carcinoma"):
        assert lesion_kind(malignant) == "malignant"
        assert resolve_mapping(BANK, TASK03, [("liver", malignant)]).lut_for("liver", malignant)[2] == 2
    for benign in ("cyst", "hemangioma", "simple renal cyst"):
        assert lesion_kind(benign) == "benign"
    with pytest.raises(ConfigError, match=r"has several tumour labels \['cancer', 'tumor'\]"):
        resolve_mapping(BANK, {**TASK03, "tumor": 3}, [("liver", "metastasis")])


def test_required_fills_name_what_a_case_does_not_label():
    kits = TargetLabels(KITS)
    m = resolve_mapping(BANK, KITS, [("kidney_left", "renal cell carcinoma")])
    (fill,) = required_fills(kits, "kidney_left", _pair(m, "kidney_left", "renal cell carcinoma"))
    assert (fill.target, fill.value, fill.organ) == ("kidney", 1, "kidney")
    m = resolve_mapping(BANK, TASK03, [("liver", "metastasis")])
    assert required_fills(TargetLabels(TASK03), "liver", _pair(m, "liver", "metastasis")) == []
    two = {"background": 0, "liver": 1, "spleen": 2, "cancer": 3}
    m = resolve_mapping(BANK, two, [("liver", "metastasis")])
    assert [f.target for f in required_fills(TargetLabels(two), "liver", _pair(m, "liver", "metastasis"))] == ["spleen"]


def test_organ_the_target_lacks_needs_drop():
    target = {"background": 0, "cancer": 1}
    with pytest.raises(ConfigError, match="has no label in") as err:
        resolve_mapping(BANK, target, [("liver", "metastasis")])
    assert "organ=drop" in str(err.value)
    m = resolve_mapping(BANK, target, [("liver", "metastasis")], {"organ": "drop"})
    assert m.lut_for("liver", "metastasis") == {0: 0, 1: 0, 2: 1}


def test_explicit_errors_name_both_sides():
    with pytest.raises(ConfigError, match=r"--labels lesion=tumour: .*has no label 'tumour'"):
        resolve_mapping(BANK, TASK03, [("liver", "metastasis")], {"lesion": "tumour"})
    with pytest.raises(ConfigError, match=r"bank 'organ' and bank 'lesion' .* would both become 'cancer'=2"):
        resolve_mapping(BANK, TASK03, [("liver", "metastasis")], {"organ": "cancer"})
    with pytest.raises(ConfigError, match="a lesion cannot be dropped"):
        resolve_mapping(BANK, TASK03, [("liver", "metastasis")], {"lesion": "drop"})
    with pytest.raises(ConfigError, match=r"--labels cyst: not a bank class, organ or lesion type"):
        resolve_mapping(BANK, TASK03, [("liver", "metastasis")], {"cyst": "cancer"})
    with pytest.raises(ConfigError, match="background: 0"):
        resolve_mapping(BANK, {"background": 1, "liver": 0}, [("liver", "m")])


def test_organ_explicit_by_organ_name_wins_over_class():
    target = {"background": 0, "liver": 1, "spleen": 2, "lesion": 3}
    m = resolve_mapping(BANK, target, [("liver", "cyst"), ("spleen", "cyst")], {"organ": "liver", "spleen": "spleen"})
    assert m.lut_for("liver", "cyst")[1] == 1 and m.lut_for("spleen", "cyst")[1] == 2


def test_parse_label_args_errors():
    assert parse_label_args(["organ = liver", "renal cell carcinoma=tumor"]) == {
        "organ": "liver", "renal cell carcinoma": "tumor"}
    with pytest.raises(ConfigError, match="expected BANK=TARGET"):
        parse_label_args(["organ"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_label_args(["organ=liver", "organ=drop"])


def test_remap_and_stray_values():
    label = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    out = remap(label, {0: 0, 1: 0, 2: 5}, file="x.nii.gz")
    assert out.tolist() == [[0, 0], [5, 5]] and label.tolist() == [[0, 1], [2, 2]]      # input untouched
    with pytest.raises(InputError, match=r"bank.nii.gz: label value\(s\) \[7\]"):
        remap(np.array([0, 7]), {0: 0, 1: 1, 2: 2}, file="bank.nii.gz")


def test_bank_ignore_band_goes_to_the_targets_ignore_label_or_back_to_its_lesion():
    """A bank written with the transition band as `ignore` prepares into Task03 (no ignore: the band is the
    lesion again) and into a target that declares ignore (nnU-Net then skips those voxels)."""
    bank = {**BANK, "ignore": 3}
    plain = resolve_mapping(bank, TASK03, [("liver", "metastasis")])
    assert plain.lut_for("liver", "metastasis") == {0: 0, 1: 1, 2: 2, 3: 2}
    assert _pair(plain, "liver", "metastasis")["ignore"].target == "cancer"
    with_ignore = resolve_mapping(bank, {**TASK03, "ignore": 5}, [("liver", "metastasis")])
    assert with_ignore.lut_for("liver", "metastasis") == {0: 0, 1: 1, 2: 2, 3: 5}
    band = np.array([0, 1, 2, 3], dtype=np.uint8)
    assert remap(band, plain.lut_for("liver", "metastasis"), file="x.nii.gz").tolist() == [0, 1, 2, 2]
    with pytest.raises(ConfigError, match="would all be the bank.s lesion class"):
        resolve_mapping({**BANK, "edema": 3}, TASK03, [("liver", "metastasis")])


def test_bank_labelled_with_the_targets_names_maps_by_same_name():
    m = resolve_mapping({"background": 0, "liver": 1, "cancer": 2}, TASK03, [("liver", "cyst")])
    assert m.lut_for("liver", "cyst") == {0: 0, 1: 1, 2: 2}
    assert {c: r.rule for c, r in _pair(m, "liver", "cyst").items()} == {"organ": "same name", "lesion": "same name"}
