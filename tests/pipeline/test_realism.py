"""Realism guarantees users rely on, measured on the real 3 mm CT in its own grid: noise, labels, redraws."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ld_augment.errors import ConfigError
from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.pipeline.synthesize import check_label_scheme
from ld_augment.pipeline.write_back import write_back

IGNORE_SCHEME = {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
ATTRIBUTES = {"density": "hypodense lesion", "density variations": "homogeneous", "size": "[[30 28 26]] pixel",
              "cavity": "within the parenchymal organ", "shape": "round-like"}


def _highpass_sd(x: np.ndarray, where: np.ndarray) -> float:
    """Robust SD of voxel minus the mean of its 6 neighbours: a noise probe independent of the write-back's."""
    kernel = np.zeros((3, 3, 3), np.float32)
    kernel[1, 1, 1] = 1.0
    for idx in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        kernel[idx] = -1.0 / 6.0
    hp = ndimage.convolve(x.astype(np.float32), kernel, mode="nearest")[where]
    return float(1.4826 * np.median(np.abs(hp - np.median(hp))))


@pytest.fixture(scope="module")
def liver_case(ct_variants, tmp_path_factory):
    ct, seg = ct_variants["ras"]
    root = tmp_path_factory.mktemp("realism")
    case = preprocess_case(ct, root / "case", organ="liver", lesion_type="hepatocellular carcinoma", seg=seg,
                           attributes={**ATTRIBUTES, "surface characteristics": "ill-defined margin"}, seed=3,
                           preview=False)
    return ct, seg, case, root


def test_noise_matches_the_organ_in_the_source_grid(liver_case) -> None:
    ct, seg, case, root = liver_case
    res = synthesize_case(case.case_dir, root / "noise", seed=0, preview=False, keep_standardized=True)
    src = nib.load(str(ct))
    before = np.asarray(src.dataobj, dtype=np.float32)
    after = np.asarray(nib.load(str(res.ct_path)).dataobj, dtype=np.float32)
    lesion = np.asarray(nib.load(str(res.label_path)).dataobj) == 2
    liver = np.asarray(nib.load(str(seg)).dataobj) == 5
    core = ndimage.binary_erosion(lesion)
    organ = ndimage.binary_erosion(liver) & ~ndimage.binary_dilation(lesion, iterations=2)
    organ &= ndimage.binary_dilation(lesion, iterations=6) & (before > -30)
    organ_sd = _highpass_sd(before, organ)
    ratio = _highpass_sd(after, core) / organ_sd
    assert 0.8 <= ratio <= 1.25, ratio
    # the same change written back WITHOUT source-grid matching: the smoother standardized noise shows
    std_ct = nib.load(str(res.out_dir / "standardized" / "ct.nii.gz"))
    std_before = np.asarray(nib.load(str(case.path("ct"))).dataobj, dtype=np.float32)
    std_lesion = np.asarray(nib.load(str(res.out_dir / "standardized" / "lesions.nii.gz")).dataobj) > 0
    plain = write_back(src, std_ct.affine, np.asarray(std_ct.dataobj) - std_before, std_lesion)
    unmatched = _highpass_sd(plain.ct_raw.astype(np.float32), core) / organ_sd
    assert unmatched < 0.8 < ratio, (unmatched, ratio)


def test_ill_defined_band_is_the_ignore_label_and_no_halo(liver_case) -> None:
    ct, seg, case, root = liver_case
    res = synthesize_case(case.case_dir, root / "ignore", seed=0, preview=False, label_scheme=IGNORE_SCHEME)
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    before = np.asarray(nib.load(str(ct)).dataobj, dtype=np.float32)
    after = np.asarray(nib.load(str(res.ct_path)).dataobj, dtype=np.float32)
    lesion, band = label == 2, label == 3
    assert lesion.sum() >= 14 and band.any()
    assert (band & ndimage.binary_dilation(lesion)).any()  # the band borders the lesion
    assert res.record["ignore_voxels_source"] == int(band.sum())
    changed = np.abs(after - before) > 50
    halo = changed & ~(lesion | band) & (label == 1)
    assert halo.sum() < 0.05 * lesion.sum()  # organ outside the label barely changes
    none = synthesize_case(case.case_dir, root / "no_band", seed=0, preview=False, label_scheme=IGNORE_SCHEME,
                           ignore_band="none")
    assert not (np.asarray(nib.load(str(none.label_path)).dataobj) == 3).any()
    with pytest.raises(ConfigError, match="highest"):
        check_label_scheme({"background": 0, "ignore": 1, "lesion": 2})


def test_vanishing_lesion_is_redrawn_then_left_out(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "case", organ="liver", lesion_type="metastasis", seg=seg, seed=1,
                           attributes={**ATTRIBUTES, "size": "[[4 4 4]] pixel"}, preview=False)
    res = synthesize_case(case.case_dir, tmp_path / "out", seed=0, preview=False)
    (rec,) = res.lesions
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    assert rec["attempts"] > 1 and rec["voxels_source"] >= 14 and (label == 2).sum() >= 14
    with pytest.raises(ConfigError, match="source grid"):
        synthesize_case(case.case_dir, tmp_path / "never", seed=0, preview=False, min_source_voxels=10**6)
    assert not (tmp_path / "never" / "ct.nii.gz").exists()  # nothing written for a case with no lesion left


def test_lesions_differ_between_organs_for_the_same_seed(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    records = []
    for organ in ("liver", "spleen"):
        case = preprocess_case(ct, tmp_path / organ, organ=organ, lesion_type="metastasis", seg=seg, seed=2,
                               preview=False)
        records.append(json.loads((case.case_dir / "report.json").read_text()))
    first, second = (list(r.values())[0][2] for r in records)
    assert {k: v for k, v in first.items() if k != "lesion location"} != \
        {k: v for k, v in second.items() if k != "lesion location"}


def test_bank_union_keeps_the_new_ignore_band() -> None:
    """The bank's label union (synthesis_bank.labels) writes the band as the ignore class, never over old lesions."""
    from synthesis_bank.labels import union_labels

    scheme = {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    source = np.array([0, 1, 2, 0, 1])
    synth = np.array([0, 3, 3, 2, 1])
    assert union_labels(source, synth, scheme).tolist() == [0, 3, 2, 2, 1]
