"""The quality gate inside synthesize_case: failing lesions are redrawn or dropped, and the record says so."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ld_augment.cli.main import main
from ld_augment.engines.procedural import ProceduralTextureEngine
from ld_augment.errors import ConfigError
from ld_augment.pipeline import preprocess_case, synthesize_case

ATTRIBUTES = {"density": "hypodense lesion", "density variations": "homogeneous", "size": "[[22 20 18]] pixel",
              "cavity": "within the parenchymal organ", "shape": "round-like", "CT value": "25"}


class FatCoreTexture(ProceduralTextureEngine):
    """Renders a fat core (a broken engine) for its first ``bad`` calls, then the real procedural texture."""

    name = "fat-core"

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def render(self, ctx, lesion_mask, report, rng):
        self.calls += 1
        out = super().render(ctx, lesion_mask, report, rng)
        if self.calls <= self.bad:  # in the memory layout it got, as the procedural engine returns it (nibabel: F)
            out = np.where(lesion_mask, -90.0, out).astype(np.float32, order="K" if out.flags.c_contiguous else "F")
        return out


@pytest.fixture(scope="module")
def case(ct_variants, tmp_path_factory):
    ct, seg = ct_variants["ras"]
    root = tmp_path_factory.mktemp("gate")
    return preprocess_case(ct, root / "case", organ="liver", lesion_type="liver metastasis", seg=seg,
                           attributes=ATTRIBUTES, seed=2, preview=False), root


def test_good_lesion_passes_and_is_recorded(case) -> None:
    case, root = case
    res = synthesize_case(case.case_dir, root / "good", seed=0, preview=False)
    (lesion,) = res.lesions
    assert lesion["quality"]["ok"] and lesion["quality"]["failures"] == []
    gate = res.record["quality_gate"]
    assert gate["mode"] == "enforce" and gate["checked"] == 1 and gate["passed_first"] == 1
    assert json.loads((root / "good" / "synthesis.json").read_text())["quality_gate"] == gate


def test_failing_lesion_is_redrawn_with_the_reason_recorded(case) -> None:
    case, root = case
    res = synthesize_case(case.case_dir, root / "redrawn", seed=0, preview=False, texture_engine=FatCoreTexture(1),
                          quality_gate="enforce")
    (lesion,) = res.lesions
    assert lesion["quality"]["ok"] and lesion["gate_attempts"] == 2
    assert any("fat/gas/bone" in reason for reason in lesion["gate_history"][0])
    assert res.record["quality_gate"]["redrawn"] == 1
    ct = np.asarray(nib.load(str(res.ct_path)).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(res.label_path)).dataobj) == 2
    assert (ct[label] < -50).mean() < 0.02  # the fat core of the failed draw was taken out again
    # everywhere: the redraw has another shape, and what the failed draw painted outside it is gone too (the
    # CT only differs from its source at the label and its partial-volume rim)
    from scipy import ndimage

    source = np.asarray(nib.load(str(case.meta["source"]["path"])).dataobj, dtype=np.float32)
    assert not ((ct != source) & ~ndimage.binary_dilation(label, iterations=2)).any()


def test_lesion_failing_every_draw_is_dropped_not_written(case) -> None:
    case, root = case
    with pytest.raises(ConfigError, match="quality gate") as err:
        synthesize_case(case.case_dir, root / "dropped", seed=0, preview=False, texture_engine=FatCoreTexture(99),
                        quality_gate="enforce")
    # the error says what the gate measured, not that the lesion was too small for the source grid
    assert "fat/gas/bone" in str(err.value) and "source grid" not in str(err.value)


def test_record_mode_writes_but_never_marks_a_failure_ok(case) -> None:
    case, root = case
    res = synthesize_case(case.case_dir, root / "recorded", seed=0, preview=False, texture_engine=FatCoreTexture(99))
    (lesion,) = res.lesions  # "auto" with another engine only records
    assert lesion["quality"]["ok"] is False and lesion["quality"]["failures"]
    assert res.record["quality_gate"]["mode"] == "record" and res.record["quality_gate"]["failed_written"] == 1
    with pytest.raises(ConfigError, match="quality_gate"):
        synthesize_case(case.case_dir, root / "x", quality_gate="sometimes")


def test_cli_avoid_keeps_lesions_off_the_given_voxels(ct_variants, tmp_path) -> None:
    ct, seg = ct_variants["ras"]
    seg_img = nib.load(str(seg))
    liver = np.asarray(seg_img.dataobj) == 5
    avoid = np.zeros(liver.shape, np.uint8)
    idx = np.argwhere(liver)
    avoid[liver & (np.indices(liver.shape)[0] < np.median(idx[:, 0]))] = 1  # half the liver holds "real tumour"
    # (16 mm: this seed's 12 mm metastasis, -20 HU in unenhanced liver, is dropped by the gate on every draw)
    avoid_path = tmp_path / "avoid.nii.gz"
    nib.save(nib.Nifti1Image(avoid, seg_img.affine), str(avoid_path))
    rc = main(["preprocess", "--image", str(ct), "--seg", str(seg), "--organ", "liver", "--lesion-type",
               "liver metastasis", "--attr", "size=[[16 16 16]] pixel", "--avoid", str(avoid_path), "--out",
               str(tmp_path / "case")])
    assert rc == 0 and json.loads((tmp_path / "case" / "case.json").read_text())["has_avoid_mask"]
    rc = main(["synthesize", str(tmp_path / "case"), "--out", str(tmp_path / "syn"), "--no-preview"])
    assert rc == 0
    label = np.asarray(nib.load(str(tmp_path / "syn" / "label.nii.gz")).dataobj) == 2
    assert label.any() and not (label & (avoid > 0)).any()


def test_gate_judges_the_source_grid_as_written(case) -> None:
    """On a 3 mm source the gate measures the half-contrast extent where the lesion will be written, and that is
    what the written files show (bench_realism's measurement; noise of the same strength, another draw)."""
    from ld_augment.engines.quality import lesion_quality
    from ld_augment.organs.masks import organ_mask
    from ld_augment.reports.model import load_reports

    case, root = case
    res = synthesize_case(case.case_dir, root / "source_grid", seed=0, preview=False)
    (lesion,) = res.lesions
    src = nib.load(str(case.meta["source"]["path"]))
    before = np.asarray(src.dataobj, dtype=np.float32)
    after = np.asarray(nib.load(str(res.ct_path)).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(res.label_path)).dataobj) == 2
    seg = np.asarray(nib.load(str(case.meta["segmentation"]["path"])).dataobj)
    (report,) = load_reports(res.report_path)
    written = lesion_quality(before, after, label, organ_mask(seg, "liver", version="v2"), report,
                             (3.0, 3.0, 3.0), organ_name="liver")
    assert label.sum() >= 27 and lesion["quality"]["source_visible_label_ratio"] == pytest.approx(
        written["visible_label_ratio"], abs=0.05)
    assert "source_contrast_share" not in lesion["quality"]  # the contrast kept is judged for lung lesions
