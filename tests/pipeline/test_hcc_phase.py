"""HCC by phase: arterial hyperenhancement, portal-venous washout (the report vocabulary says "enhanced ct" for
both; the aorta tells them apart)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.organs.masks import organ_mask
from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.reports.model import load_reports

pytestmark = pytest.mark.needs_shared


def _phase_scan(real_ct: Path, real_seg: Path, out: Path, liver_hu: float, aorta_hu: float) -> Path:
    img = nib.load(str(real_ct))
    ct = np.asarray(img.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(str(real_seg)).dataobj)
    for name, hu in (("liver", liver_hu), ("aorta", aorta_hu)):
        mask = organ_mask(seg, name, version="v2")
        ct[mask & (ct > -50)] += hu
    nib.save(nib.Nifti1Image(ct.astype(np.int16), img.affine), str(out))
    return out


@pytest.mark.parametrize("phase, liver_hu, aorta_hu", [("arterial", 25.0, 300.0), ("enhanced ct", 60.0, 130.0)])
def test_hcc_follows_the_phase(real_ct, real_seg, tmp_path, phase, liver_hu, aorta_hu) -> None:
    ct = _phase_scan(real_ct, real_seg, tmp_path / "ct.nii.gz", liver_hu, aorta_hu)
    densities, contrasts = [], []
    for seed in range(2):
        case = preprocess_case(ct, tmp_path / f"case{seed}", organ="liver", lesion_type="hepatocellular carcinoma",
                               seg=real_seg, seed=seed, preview=False, attributes={"size": "20x20x18"})
        meta = json.loads((case.case_dir / "case.json").read_text())
        assert meta["contrast_phase"] == phase
        (report,) = load_reports(case.case_dir / "report.json")
        assert report.enhancement_status.startswith("enhanced ct")  # the vocabulary has no arterial phase
        densities.append(report.density)
        # the phase is what is tested, not the gate (which drops seed 1's washout HCC: label wider than visible)
        res = synthesize_case(case.case_dir, tmp_path / f"out{seed}", seed=seed, preview=False, quality_gate="record")
        rec = json.loads((res.out_dir / "synthesis.json").read_text())["lesions"][0]
        contrasts.append(rec["quality"]["contrast_hu"])  # core - parenchyma, as the gate measured it
    if phase == "arterial":  # nonrim arterial phase hyperenhancement
        assert all("hyperdense" in d or "mixed" in d for d in densities) and np.median(contrasts) > 10
    else:  # washout: below the liver, never hyperdense
        assert not any("hyperdense" in d for d in densities) and np.median(contrasts) < 0
