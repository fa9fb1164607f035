"""preprocess_case on the real CT: outputs, geometry, boxes inside the organ, overrides, errors, untouched input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError, InputError
from ld_augment.organs.masks import organ_mask
from ld_augment.engines.procedural.density import parenchyma_hu
from ld_augment.pipeline import preprocess_case
from ld_augment.placement.bboxes import BBox
from ld_augment.reports.model import load_reports


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()



@pytest.fixture(scope="module")
def liver_case(ct_variants, tmp_path_factory):
    ct, seg = ct_variants["ras"]
    before = (sha(ct), sha(seg))
    out = tmp_path_factory.mktemp("pre") / "case"
    case = preprocess_case(ct, out, organ="Liver", lesion_type="hepatocellular carcinoma", seg=seg,
                           attributes={"density": "low density lesion", "size": "[[14 12 10]] pixel"},
                           num_lesions=2, seed=3)
    return case, before, (ct, seg)


def test_writes_a_complete_case_folder(liver_case) -> None:
    case, _, _ = liver_case
    for name in ("case.json", "ct.nii.gz", "organs.nii.gz", "report.json", "bboxes.nii.gz", "preview.png"):
        assert (case.case_dir / name).is_file(), name
    meta = json.loads((case.case_dir / "case.json").read_text())
    assert meta["organ"] == "liver" and meta["segmentation"]["label_version"] == "v2"
    assert len(meta["bboxes"]) == 2


def test_input_files_untouched(liver_case) -> None:
    _, before, (ct, seg) = liver_case
    assert (sha(ct), sha(seg)) == before


def test_standardized_grid_is_ras_1mm_and_covers_the_same_world_box(liver_case) -> None:
    case, _, (ct, _) = liver_case
    std = nib.load(str(case.path("ct")))
    assert nib.aff2axcodes(std.affine) == ("R", "A", "S")
    assert np.allclose(std.header.get_zooms()[:3], 1.0)
    src = nib.load(str(ct))
    # the source volume's centre (world) lies inside the standardized volume near its centre
    centre_world = src.affine @ np.r_[(np.array(src.shape) - 1) / 2, 1]
    centre_std = np.linalg.inv(std.affine) @ centre_world
    assert np.all(np.abs(centre_std[:3] - (np.array(std.shape) - 1) / 2) < 2.0)
    assert case.meta["source"]["sha256"] == sha(ct)
    assert np.allclose(case.meta["source"]["affine"], src.affine)


def test_boxes_lie_inside_the_liver_without_overlap(liver_case) -> None:
    case, _, _ = liver_case
    seg = np.asarray(nib.load(str(case.path("organs"))).dataobj)
    liver = organ_mask(seg, "liver", version="v2")
    boxes = [BBox.from_dict(b) for b in case.meta["bboxes"]]
    for box in boxes:
        assert box.size == (14, 12, 10)
        assert liver[box.slices(liver.shape)].mean() > 0.95
    assert not boxes[0].overlaps(boxes[1])
    bmap = np.asarray(nib.load(str(case.path("bboxes"))).dataobj)
    assert set(np.unique(bmap)) == {0, 1, 2}


def test_report_carries_overrides_and_boxes(liver_case) -> None:
    case, _, _ = liver_case
    (report,) = load_reports(case.path("report"))
    assert report.organ_id == 5  # v1 id of the liver
    assert report.density == "hypodense lesion"  # synonym normalized to the canonical value
    assert [tuple(c) for c in report.bbox_centers] == [tuple(b["center"]) for b in case.meta["bboxes"]]


def test_seeded_runs_are_identical(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    kw = dict(organ="liver", lesion_type="cyst", seg=seg, seed=11, preview=False, spacing=(2.0, 2.0, 2.0))
    a = preprocess_case(ct, tmp_path / "a", **kw)
    b = preprocess_case(ct, tmp_path / "b", **kw)
    assert a.meta["bboxes"] == b.meta["bboxes"]
    assert (tmp_path / "a" / "report.json").read_text() == (tmp_path / "b" / "report.json").read_text()


def test_hollow_organ_lesion_uses_a_hollow_cavity(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "s", organ="stomach", lesion_type="gastric cancer", seg=seg, seed=2,
                           preview=False, spacing=(2.0, 2.0, 2.0))
    (report,) = load_reports(case.path("report"))
    assert report.cavity in ("within the lumen of a hollow organ", "wall thickening")


def test_sampled_ct_value_agrees_with_density(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    for seed in range(4):
        case = preprocess_case(ct, tmp_path / f"c{seed}", organ="liver", lesion_type="metastasis", seg=seg,
                               attributes={"density": "hypodense lesion"}, seed=seed, preview=False,
                               spacing=(2.0, 2.0, 2.0))
        (report,) = load_reports(case.path("report"))
        # the crop is non-contrast (aorta ~43 HU): inferred, and hypodense = 10-25 HU below ~46 HU parenchyma
        assert report.enhancement_status == "non-contrast ct"
        if report.ct_value is not None:
            assert 15 <= report.ct_value <= 46 - 10


def test_solid_tumour_never_at_fat_density(ct_variants, tmp_path) -> None:
    """The crop's pancreas has a plain median of about -7 HU (fat): the tumour's value comes from parenchyma."""
    ct, seg = ct_variants["ras"]
    for seed in range(4):
        case = preprocess_case(ct, tmp_path / f"p{seed}", organ="pancreas", lesion_type="pancreatic tumor", seg=seg,
                               seed=seed, preview=False, spacing=(2.0, 2.0, 2.0))
        (report,) = load_reports(case.path("report"))
        ct_std = np.asarray(nib.load(str(case.path("ct"))).dataobj, dtype=np.float32)
        pancreas = organ_mask(np.asarray(nib.load(str(case.path("organs"))).dataobj), "pancreas",
                              version=case.meta["segmentation"]["label_version"])
        parenchyma = parenchyma_hu(ct_std[pancreas], "pancreas")
        assert report.ct_value >= 5, (seed, report.ct_value, report.density)  # never fat
        if "hypo" in report.density:  # the density word wins over the solid floor: below the parenchyma
            assert report.ct_value <= parenchyma - 8, (seed, report.ct_value, parenchyma)


def test_errors_name_the_file_or_organ(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    with pytest.raises(InputError, match="missing.nii.gz"):
        preprocess_case(tmp_path / "missing.nii.gz", tmp_path / "x", organ="liver", lesion_type="cyst", seg=seg)
    other_ct, _ = ct_variants["aniso"]
    with pytest.raises(InputError, match="aniso_ct"):
        preprocess_case(other_ct, tmp_path / "x", organ="liver", lesion_type="cyst", seg=seg)
    with pytest.raises(InputError, match="urinary_bladder|urinary bladder"):
        preprocess_case(ct, tmp_path / "x", organ="urinary bladder", lesion_type="bladder cancer", seg=seg)
    with pytest.raises(ConfigError, match="num_lesions"):
        preprocess_case(ct, tmp_path / "x", organ="liver", lesion_type="cyst", seg=seg, num_lesions=0)
    with pytest.raises(ConfigError):
        preprocess_case(ct, tmp_path / "x", organ="liver", lesion_type="cyst", seg=seg,
                        attributes={"density": "sparkly"})
    with pytest.raises(ConfigError, match="liver"):
        preprocess_case(ct, tmp_path / "x", organ="liver", lesion_type="cyst", seg=seg,
                        attributes={"size": "[[150 150 80]] pixel"})
    assert not (tmp_path / "x" / "case.json").exists()


def test_user_size_that_does_not_fit_shrinks_when_asked(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    case = preprocess_case(ct, tmp_path / "s", organ="liver", lesion_type="cyst", seg=seg, shrink=True,
                           attributes={"size": "[[150 150 80]] pixel"}, preview=False)
    box = BBox.from_dict(case.meta["bboxes"][0])
    assert all(s < r for s, r in zip(box.size, (150, 150, 80)))
    (report,) = load_reports(case.path("report"))
    assert tuple(report.size) == box.size


def test_avoid_mask_keeps_boxes_off_existing_lesions(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    seg_img = nib.load(str(seg))
    liver = np.asarray(seg_img.dataobj) == 5
    avoid = np.zeros(liver.shape, np.uint8)
    xs = np.nonzero(liver)[0]
    avoid[: int(np.median(xs))][liver[: int(np.median(xs))]] = 2  # half the liver is "already lesion"
    avoid_path = tmp_path / "avoid.nii.gz"
    nib.save(nib.Nifti1Image(avoid, seg_img.affine), str(avoid_path))
    case = preprocess_case(ct, tmp_path / "a", organ="liver", lesion_type="cyst", seg=seg, avoid=avoid_path,
                           attributes={"size": "[[10 10 10]] pixel"}, num_lesions=2, seed=5, preview=False)
    occupied = np.asarray(nib.load(str(case.case_dir / "avoid.nii.gz")).dataobj) > 0
    for b in case.meta["bboxes"]:
        assert not occupied[BBox.from_dict(b).slices(occupied.shape)].any()


def test_without_a_segmentation_totalsegmentator_is_used_and_kept(ct_variants, tmp_path, monkeypatch) -> None:
    """No --seg: the organs come from TotalSegmentator (stubbed here: no weights on this machine), and its
    source-grid output is kept in the case so synthesize can label the organ in the user's grid."""
    import shutil

    import ld_augment.organs.totalseg as totalseg
    from ld_augment.pipeline import synthesize_case

    ct, seg = ct_variants["ras"]
    calls = []

    def fake_segment(ct_path, out_path, *, organs, **options):
        calls.append((Path(ct_path), list(organs), options))
        shutil.copy(seg, out_path)
        return Path(out_path)

    monkeypatch.setattr(totalseg, "segment_organs", fake_segment)
    monkeypatch.chdir(ct.parent)  # a relative image path must still resolve later, from anywhere
    case = preprocess_case(ct.name, tmp_path / "case", organ="liver", lesion_type="cyst", seed=0, preview=False,
                           attributes={"size": "[[10 10 10]] pixel"}, spacing=(2.0, 2.0, 2.0),
                           segment_options={"fast": True, "device": "cpu"})
    assert calls and calls[0][1] == ["liver"] and calls[0][2] == {"fast": True, "device": "cpu"}
    assert case.meta["segmentation"]["origin"] == "totalsegmentator"
    kept = Path(case.meta["segmentation"]["path"])
    assert kept.parent == case.case_dir
    kept_img, seg_img = nib.load(str(kept)), nib.load(str(seg))
    assert np.array_equal(np.asarray(kept_img.dataobj), np.asarray(seg_img.dataobj))
    assert np.allclose(kept_img.affine, seg_img.affine)
    monkeypatch.chdir(tmp_path)
    res = synthesize_case(case.case_dir, tmp_path / "out", preview=False)
    label = np.asarray(nib.load(str(res.label_path)).dataobj)
    assert (label == 1).sum() > 0.9 * (np.asarray(nib.load(str(seg)).dataobj) == 5).sum() - (label == 2).sum()
