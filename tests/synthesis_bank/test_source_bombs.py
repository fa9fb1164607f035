"""Issue 22: a bank source whose label map is a memory bomb (or on another grid than its CT) fails that case at
the header, in milliseconds and without reading voxels; the other sources are built."""

from __future__ import annotations

import gzip
import time
import tracemalloc

import nibabel as nib
import numpy as np

from synthesis_bank.builder import build_bank
from synthesis_bank.recipe import Recipe


def _bomb_header(affine: np.ndarray) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.uint8)
    header.set_sform(affine, code=1)
    header.set_data_offset(352)
    return gzip.compress(header.binaryblock + b"\0" * 68)


def _build(recipe_dict, raw, tmp_path, fakes):
    root, segs = raw
    data = dict(recipe_dict, sources={"nnunet_raw": str(root), "segmentations": str(segs)}, segmentation="error",
                variants_per_source=1)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        summary = build_bank(Recipe.from_dict(data, origin="recipe"), tmp_path / "bank", progress=False, **fakes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return summary, peak, time.perf_counter() - t0


def test_label_bomb_fails_its_case_alone_at_the_header(recipe_dict, nnunet_raw, tmp_path, fakes):
    root, _ = nnunet_raw
    label = root / "labelsTr" / "liver_001.nii.gz"
    label.write_bytes(_bomb_header(nib.load(str(label)).affine))
    summary, peak, seconds = _build(recipe_dict, nnunet_raw, tmp_path, fakes)
    failed = {case: error for case, _, error in summary.failed}
    assert list(failed) == ["liver_001_syn000"] and "cannot hold" in failed["liver_001_syn000"]
    assert str(label) in failed["liver_001_syn000"]
    assert len(summary.done) == 1 and summary.stopped is None
    assert peak < 200 << 20 and seconds < 60


def test_label_on_another_grid_than_its_ct_fails_its_case(recipe_dict, nnunet_raw, tmp_path, fakes):
    root, _ = nnunet_raw
    label = root / "labelsTr" / "liver_000.nii.gz"
    img = nib.load(str(label))
    nib.save(nib.Nifti1Image(np.zeros((50, 50, 50), np.uint8), img.affine), str(label))
    summary, _, _ = _build(recipe_dict, nnunet_raw, tmp_path, fakes)
    failed = {case: error for case, _, error in summary.failed}
    assert list(failed) == ["liver_000_syn000"] and "different shapes" in failed["liver_000_syn000"]
