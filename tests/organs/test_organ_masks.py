"""Organ masks and label-version detection, on generated maps and the real TotalSegmentator outputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.nifti import load_label_map, sha256_file
from ld_augment.organs.masks import detect_label_version, organ_mask
from ld_augment.organs.registry import organ_label_ids


def symmetric_map(version: str) -> np.ndarray:
    """Liver, both kidneys, both psoas muscles and pancreas written with `version` ids."""
    seg = np.zeros((20, 20, 10), np.uint8)
    organs = ["liver", "kidney_left", "kidney_right", "iliopsoas_left", "iliopsoas_right", "pancreas"]
    for i, organ in enumerate(organs):
        seg[i * 3:i * 3 + 2, 2:8, 2:8] = organ_label_ids(organ, version)[0]
    return seg


def test_detect_binary_v1_v2_and_override() -> None:
    assert detect_label_version(np.zeros((3, 3, 3))) == "binary"
    assert detect_label_version((np.arange(27).reshape(3, 3, 3) > 13).astype(np.uint8)) == "binary"
    assert detect_label_version(symmetric_map("v1")) == "v1"
    assert detect_label_version(symmetric_map("v2")) == "v2"
    assert detect_label_version(np.array([0, 5, 117])) == "v2"  # beyond v1's 104 classes
    assert detect_label_version(symmetric_map("v2"), override="v1") == "v1"
    with pytest.raises(ConfigError, match="unknown label version 'v9'"):
        detect_label_version(symmetric_map("v2"), override="v9")


def test_organ_mask_follows_the_version() -> None:
    v1, v2 = symmetric_map("v1"), symmetric_map("v2")
    assert np.array_equal(organ_mask(v1, "pancreas", version="v1"), v1 == 10)
    assert np.array_equal(organ_mask(v2, "pancreas", version="v2"), v2 == 7)
    assert np.array_equal(organ_mask(v1, "pancreas"), organ_mask(v2, "pancreas"))  # auto-detected
    kidneys = organ_mask(v2, "kidney", version="v2")
    assert np.array_equal(kidneys, (v2 == 2) | (v2 == 3))
    binary = (v2 == 5).astype(np.uint8)
    assert np.array_equal(organ_mask(binary, "liver", version="binary"), v2 == 5)


def test_absent_organ_is_a_clear_input_error() -> None:
    with pytest.raises(InputError, match=r"organs.nii.gz: organ 'urinary_bladder' \(TotalSegmentator v2 label 21\) "
                                         r"is absent; labels present: \[2, 3, 5, 7, 88, 89\]"):
        organ_mask(symmetric_map("v2"), "bladder", version="v2", name="organs.nii.gz")
    with pytest.raises(InputError, match="binary organ mask for 'liver' is empty"):
        organ_mask(np.zeros((4, 4, 4), np.uint8), "liver", version="binary")
    with pytest.raises(ConfigError, match="unknown organ"):
        organ_mask(symmetric_map("v2"), "livr", version="v2")


def test_real_v2_segmentation_liver(real_seg: Path) -> None:
    digest = sha256_file(real_seg)
    seg = load_label_map(real_seg)
    assert detect_label_version(seg) == "v2"
    liver = organ_mask(seg, "Liver", version="auto")
    assert liver.dtype == bool and int(liver.sum()) == 38_634
    assert int(organ_mask(seg, "pancreas", version="v2").sum()) == int((np.asanyarray(seg.dataobj) == 7).sum()) > 0
    assert sha256_file(real_seg) == digest


@pytest.mark.parametrize("case, organ, label", [("liver_cancer", "liver", 5), ("bladder_cancer", "bladder", 104)])
def test_real_v1_segmentations_are_detected_as_v1(shared_data: Path, case: str, organ: str, label: int) -> None:
    path = shared_data / "lesions" / case / "totalseg_v1.nii.gz"
    seg = np.asanyarray(load_label_map(path).dataobj)  # max label 103/104: only the left/right rule decides
    assert detect_label_version(seg) == "v1"
    mask = organ_mask(seg, organ, version="auto")
    assert np.array_equal(mask, seg == label) and mask.any()
    lesion_label = np.asanyarray(nib.load(str(path.parent / "label.nii.gz")).dataobj)
    assert (mask & (lesion_label > 0)).sum() > 0.5 * (lesion_label > 0).sum()  # the annotated organ overlaps
