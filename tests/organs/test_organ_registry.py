"""TotalSegmentator class maps, organ-name normalization, hollow/solid sets, v1 <-> v2 conversion."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ld_augment.errors import ConfigError
from ld_augment.organs.registry import (
    CAVITY_VALUES,
    HOLLOW_ORGANS,
    ORGAN_CHOICES,
    SOLID_ORGANS,
    cavity_values,
    class_map,
    convert_labels,
    default_cavity,
    is_hollow,
    normalize_organ_name,
    organ_label_ids,
    organ_name,
)
from ld_augment.resources import load_json_resource


def test_class_maps_have_the_documented_sizes() -> None:
    assert sorted(class_map("v1")) == list(range(1, 105))
    assert sorted(class_map("v2")) == list(range(1, 118))


def test_v1_map_agrees_with_the_original_vocabulary_file() -> None:
    original = load_json_resource("vocab", "totalseg_v1_classes.json")
    assert {int(k): v.replace(" ", "_") for k, v in original.items()} == dict(class_map("v1"))


def test_v2_map_agrees_with_installed_totalsegmentator() -> None:
    map_to_binary = pytest.importorskip("totalsegmentator.map_to_binary")
    assert dict(map_to_binary.class_map["total"]) == dict(class_map("v2"))


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("liver", "liver"), ("Liver", "liver"), (" LIVER ", "liver"), ("kidney_left", "kidney_left"),
        ("left kidney", "kidney_left"), ("Kidney Left", "kidney_left"), ("kidney-left", "kidney_left"),
        ("Right Kidney", "kidney_right"), ("bladder", "urinary_bladder"), ("Urinary Bladder", "urinary_bladder"),
        ("gall bladder", "gallbladder"), ("oesophagus", "esophagus"), ("small intestine", "small_bowel"),
        ("large intestine", "colon"), ("suprarenal gland", "adrenal_gland"), ("kidneys", "kidney"),
        ("vertebrae L5", "vertebrae_L5"), ("humerus left", "humerus_left"), ("hepatic portal vein",
                                                                             "portal_vein_and_splenic_vein"),
    ],
)
def test_normalize_organ_name(name: str, canonical: str) -> None:
    assert normalize_organ_name(name) == canonical


def test_unknown_organ_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="unknown organ 'livr'; did you mean liver"):
        normalize_organ_name("livr")
    with pytest.raises(ConfigError, match="clavicula_left, clavicula_right"):  # ambiguous without a side
        normalize_organ_name("clavicle")
    with pytest.raises(ConfigError, match="unknown organ 'xyzzy'"):
        normalize_organ_name("xyzzy")


def test_label_ids_differ_between_versions() -> None:
    assert organ_label_ids("liver", "v1") == organ_label_ids("liver", "v2") == (5,)
    assert organ_label_ids("pancreas", "v1") == (10,) and organ_label_ids("pancreas", "v2") == (7,)
    assert organ_label_ids("bladder", "v1") == (104,) and organ_label_ids("bladder", "v2") == (21,)
    assert organ_label_ids("esophagus", "v1") == (42,) and organ_label_ids("esophagus", "v2") == (15,)
    assert organ_label_ids("left kidney", "v2") == (3,)


def test_groups_map_to_several_ids() -> None:
    assert organ_label_ids("kidney", "v2") == (2, 3)
    assert organ_label_ids("lung", "v1") == (13, 14, 15, 16, 17)
    assert organ_label_ids("lung", "v2") == (10, 11, 12, 13, 14)
    assert organ_label_ids("heart", "v2") == (51,)  # a real v2 class wins over the group
    assert organ_label_ids("heart", "v1") == (44, 45, 46, 47, 48)


def test_class_missing_from_a_version_and_bad_version() -> None:
    with pytest.raises(ConfigError, match="'face' has no class in TotalSegmentator v2"):
        organ_label_ids("face", "v2")
    with pytest.raises(ConfigError, match="unknown TotalSegmentator label version 'v3'"):
        organ_label_ids("liver", "v3")


def test_organ_name_inverts_ids() -> None:
    for version in ("v1", "v2"):
        for label_id, name in class_map(version).items():
            assert organ_name(label_id, version) == name
            assert organ_label_ids(name, version) == (label_id,)
    with pytest.raises(ConfigError, match="label 118 is not a TotalSegmentator v2 class"):
        organ_name(118, "v2")


def test_hollow_and_solid_sets_and_cavities() -> None:
    assert HOLLOW_ORGANS == {"urinary_bladder", "stomach", "colon", "esophagus", "gallbladder"}
    assert not HOLLOW_ORGANS & SOLID_ORGANS
    assert {"liver", "spleen", "pancreas", "kidney_left", "kidney_right"} <= SOLID_ORGANS
    assert all(name in ORGAN_CHOICES for name in HOLLOW_ORGANS | SOLID_ORGANS)
    assert is_hollow("Bladder") and is_hollow("gall bladder") and not is_hollow("liver")
    assert len(CAVITY_VALUES) == 4 and len(set(CAVITY_VALUES)) == 4
    for organ in ("stomach", "liver", "kidney_left", "aorta"):
        assert default_cavity(organ) in cavity_values(organ)
    assert cavity_values("colon") == ("within the lumen of a hollow organ", "wall thickening")
    assert cavity_values("liver") == ("within the parenchymal organ", "protruding from the parenchymal organ")


def test_organ_choices_are_canonical_and_unique() -> None:
    assert len(ORGAN_CHOICES) == len(set(ORGAN_CHOICES))
    assert all(normalize_organ_name(choice) == choice for choice in ORGAN_CHOICES)
    assert {"liver", "urinary_bladder", "kidney", "kidney_left"} <= set(ORGAN_CHOICES)


def test_convert_labels_by_name() -> None:
    v1 = np.array([[0, 5, 10, 104], [7, 42, 93, 44]])  # liver, pancreas, bladder / aorta, esophagus, face, heart part
    v2 = convert_labels(v1, "v1", "v2")
    assert v2.tolist() == [[0, 5, 7, 21], [52, 15, 0, 51]]
    assert v1.tolist() == [[0, 5, 10, 104], [7, 42, 93, 44]]  # input untouched
    back = convert_labels(v2, "v2", "v1")
    assert back.tolist() == [[0, 5, 10, 104], [7, 42, 0, 0]]  # face is lost, v2 heart has no single v1 class
    every_v2 = np.arange(118)
    roundtrip = convert_labels(convert_labels(every_v2, "v2", "v1"), "v1", "v2")
    kept = roundtrip == every_v2
    assert kept.sum() > 90 and np.all(roundtrip[~kept] == 0)
    with pytest.raises(ConfigError, match="outside TotalSegmentator v1 range"):
        convert_labels(np.array([105]), "v1", "v2")


def test_registry_is_pure_data_without_torch() -> None:
    code = "import sys, ld_augment.organs.registry, ld_augment.organs.masks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
