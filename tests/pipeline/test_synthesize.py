"""synthesize_case on the real CT in three geometries: source grid and dtype kept, changes only at the lesions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ld_augment.errors import ConfigError, InputError
from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["ras", "lps", "aniso"])
def synthesized(request, ct_variants, tmp_path_factory):
    ct, seg = ct_variants[request.param]
    root = tmp_path_factory.mktemp(f"syn_{request.param}")
    case = preprocess_case(ct, root / "case", organ="liver", lesion_type="hepatocellular carcinoma", seg=seg,
                           attributes={"density": "hypodense lesion", "size": "[[16 14 12]] pixel",
                                       "cavity": "within the parenchymal organ"},
                           num_lesions=2, seed=1)
    before = sha(ct)
    result = synthesize_case(case.case_dir, root / "out", seed=7, keep_standardized=True)
    return request.param, ct, seg, before, case, result


def test_source_geometry_and_dtype_preserved(synthesized) -> None:
    _, ct, _, before, _, result = synthesized
    src = nib.load(str(ct))
    out = nib.load(str(result.ct_path))
    lab = nib.load(str(result.label_path))
    assert out.shape == src.shape and lab.shape == src.shape
    assert np.allclose(out.affine, src.affine) and np.allclose(lab.affine, src.affine)
    assert out.get_data_dtype() == src.get_data_dtype()
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert sha(ct) == before  # the source file is never touched


def test_changes_only_near_the_lesions(synthesized) -> None:
    _, ct, _, _, _, result = synthesized
    src = np.asarray(nib.load(str(ct)).dataobj)
    out = np.asarray(nib.load(str(result.ct_path)).dataobj)
    lesion = np.asarray(nib.load(str(result.label_path)).dataobj) == 2
    changed = src != out
    assert lesion.sum() > 20 and changed.sum() > 0
    # the label has the lesion where the CT changed ...
    assert changed[lesion].mean() > 0.9
    # ... and the CT changed nowhere but in a thin neighbourhood of the lesion (blended margin)
    near = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3), bool), iterations=3)
    assert not changed[~near].any()
    # outside the written region every voxel is bit-identical
    region = result.record["source_region"]
    outside = np.ones(src.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(region["start"], region["stop"]))] = False
    assert np.array_equal(src[outside], out[outside])


def test_lesions_are_hypodense_inside_the_liver_and_disjoint(synthesized) -> None:
    _, ct, seg, _, _, result = synthesized
    out = np.asarray(nib.load(str(result.ct_path)).dataobj).astype(float)
    label = np.asarray(nib.load(str(result.label_path)).dataobj)
    liver = np.asarray(nib.load(str(seg)).dataobj) == 5
    lesion = label == 2
    assert liver[lesion].mean() > 0.95  # cavity "within the parenchymal organ"
    assert out[lesion].mean() < out[liver & ~lesion].mean() - 5
    assert np.array_equal(label[liver & ~lesion], np.full((liver & ~lesion).sum(), 1, np.uint8))
    std = np.asarray(nib.load(str(result.out_dir / "standardized" / "lesions.nii.gz")).dataobj)
    assert set(np.unique(std)) == {0, 1, 2}  # two separate lesions, no voxel shared
    assert len(result.lesions) == 2
    for lesion_rec in result.lesions:
        assert lesion_rec["adherence"]  # measurements are stored with each lesion


def test_outputs_recorded(synthesized) -> None:
    _, _, _, _, _, result = synthesized
    rec = json.loads((result.out_dir / "synthesis.json").read_text())
    assert rec["engine"]["mask"] and rec["engine"]["texture"]
    assert rec["label_scheme"] == {"background": 0, "organ": 1, "lesion": 2}
    # the procedural engine paints ideal edges: written with the scan's point-spread function
    assert rec["write_back"] == {"partial_label_share": None, "contour_share": None, "contour_spread": 0.0,
                                 "average_under_label": False, "psf_floor_mm": SCAN_PSF_FWHM_MM}
    assert (result.out_dir / "preview.png").stat().st_size > 1000
    assert (result.out_dir / "report.json").is_file()


def test_seeded_runs_identical_and_seed_matters(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "case", organ="liver", lesion_type="metastasis", seg=seg, seed=4,
                           attributes={"size": "[[12 12 10]] pixel"}, preview=False)
    a = synthesize_case(case.case_dir, tmp_path / "a", seed=1, preview=False)
    b = synthesize_case(case.case_dir, tmp_path / "b", seed=1, preview=False)
    c = synthesize_case(case.case_dir, tmp_path / "c", seed=2, preview=False)
    assert sha(a.ct_path) == sha(b.ct_path) and sha(a.label_path) == sha(b.label_path)
    assert sha(a.ct_path) != sha(c.ct_path)


def test_label_scheme_mapping_and_errors(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "case", organ="liver", lesion_type="cyst", seg=seg, seed=4,
                           attributes={"size": "[[10 10 10]] pixel"}, preview=False)
    res = synthesize_case(case.case_dir, tmp_path / "o", seed=0, preview=False,
                          label_scheme={"background": 0, "lesion": 1})
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    assert set(np.unique(label)) == {0, 1}  # no organ label in this scheme
    with pytest.raises(ConfigError, match="lesion"):
        synthesize_case(case.case_dir, tmp_path / "o2", label_scheme={"organ": 1})
    with pytest.raises(InputError, match="not a preprocessed case"):
        synthesize_case(tmp_path, tmp_path / "o3")


def test_each_lesion_is_measured_against_its_own_box(ct_variants, tmp_path) -> None:
    """Reports keep one size text (the first lesion's); adherence must use each lesion's own box size."""
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "case", organ="liver", lesion_type="metastasis", seg=seg, seed=0,
                           num_lesions=2, preview=False, spacing=(1.5, 1.5, 1.5))
    res = synthesize_case(case.case_dir, tmp_path / "out", seed=0, preview=False)
    for lesion, box in zip(res.lesions, case.meta["bboxes"]):
        assert lesion["adherence"]["requested_size_vox"] == box["size"]
