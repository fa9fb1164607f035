"""Released mode reproduces the ORIGINAL LMNet inference exactly (../shared/reference/lmnet_selection).

The golden was made by running the original ``InferMaskDiffusion.log_images`` with the sampler replaced by a
recording stub. Here our engine runs with its sampler replaced by the recorded soft outputs, on the same
cases brought onto our RAS grid, and must feed the sampler the same windows, conditioning channels and text,
retry the same lesions, keep the same masks and compose the same final label.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import ld_augment.engines.diffusion.mask as mask_module
from ld_augment.engines import LesionContext, create_mask_engine
from ld_augment.engines.diffusion.crops import CropWindow
from ld_augment.engines.diffusion.selection import choose_organ_key, compose_label
from ld_augment.io.network_layout import layout
from ld_augment.io.standardize import standardize_image
from ld_augment.nets import LMNET_TINY, build_network, save_checkpoint
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import load_reports
from ld_augment.reports._organs import organ_name
from ld_augment.reports.conditioning import conditioning_attributes
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID

CASES = {"case01": "liver/liver_cancer/case01", "case02": "kidney/kidney_tumor/case02",
         "case03": "stomach/gastric_cancer/case03",
         # reference/training/edge_cases: (a) a box longer than the crop along S, (b) every box <= 50 voxels
         "case04": "liver/liver_cancer/case04", "case05": "liver/liver_cancer/case05"}
EDGE_CASES = ("case04", "case05")
SAL = layout("released")


def _load(path: Path):
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)


@pytest.fixture(scope="module")
def folder(reference_data: Path) -> Path:
    path = reference_data / "lmnet_selection"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("sel") / "lmnet.pt", build_network(LMNET_TINY), LMNET_TINY,
                           encoder_id=VOCAB_ID)
    return create_mask_engine("diffusion", checkpoint=ckpt, encoder="vocab", label_version="v1",
                              network_layout="released", selection="released", cavity_text="released",
                              window="fixed")


def _boxes(label_grid: np.ndarray) -> list[BBox]:
    """The case's lesion boxes on our grid (each coarse-label component's bounding box)."""
    labels, _ = ndimage.label(label_grid == 2)
    out = []
    for sl in ndimage.find_objects(labels):
        size = [s.stop - s.start for s in sl]
        out.append(BBox(tuple(s.start + n // 2 for s, n in zip(sl, size)), tuple(size)))
    return out


@pytest.fixture(scope="module")
def edge_folder(reference_data: Path) -> Path:
    path = reference_data / "training" / "edge_cases"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_released_selection_matches_the_original(request, engine, monkeypatch, case) -> None:
    folder = request.getfixturevalue("edge_folder" if case in EDGE_CASES else "folder")
    data, golden = _load(folder / f"{case}_dataset.pt.gz"), _load(folder / f"{case}_calls.pt.gz")
    calls = golden["calls"]
    seg_grid = np.ascontiguousarray(SAL.from_network(data["seg"][0].numpy().astype(np.int64)))
    label_grid = SAL.from_network(data["label"][0].numpy())
    reports = {r.organ_id: r for r in load_reports(folder / "inputs" / CASES[case] / "type.json")}
    assert engine.skips_failed_lesions

    fed: list[dict] = []

    def sampler(unet, cond, context, **kwargs):
        n = len(fed)
        assert n < len(calls), "more sampler calls than the original made"
        fed.append({"cond": cond.clone(), "texts": texts[-1]})
        return calls[n]["soft_output"].clone()

    texts: list[list[str]] = []
    monkeypatch.setattr(mask_module, "sample_lmnet", sampler)
    monkeypatch.setattr(mask_module, "encode_context", lambda enc, t, dev: texts.append(list(t)))

    boxes = _boxes(label_grid)
    order = engine.plan_lesions(boxes, seg_grid.shape)
    occupied = np.zeros(seg_grid.shape, bool)
    keys_used: list[int] = []
    first_calls: list[int] = []
    for index in order:
        box = boxes[index]
        key = choose_organ_key(seg_grid, box.slices(seg_grid.shape), sorted(reports))
        keys_used.append(key)
        report = reports[key]
        ctx = LesionContext(ct=np.zeros(seg_grid.shape, np.float32), organ_seg=seg_grid, organ_mask=seg_grid == key,
                            organ_name=organ_name(key),
                            spacing=(1.0, 1.0, 1.0), occupied=occupied.copy())
        first_calls.append(len(fed))
        window = CropWindow.for_box(*SAL.box_to_network(box.start(seg_grid.shape), box.stop(seg_grid.shape),
                                                         seg_grid.shape), engine.crop, SAL.network_shape(seg_grid.shape))
        w = calls[len(fed)]["window_w1w2h1h2d1d2"]
        assert [(a, a + s) for a, s in zip(window.start, window.size)] == [(w[0], w[1]), (w[2], w[3]), (w[4], w[5])]
        lesion = engine.generate_mask(ctx, box, report, np.random.default_rng(0))
        assert not (lesion & occupied).any()
        occupied |= lesion
        expected_attrs = conditioning_attributes(report, purpose="lmnet", cavity_text="released")
        assert list(calls[first_calls[-1]]["text"][0].items()) == list(expected_attrs.items())

    assert len(fed) == len(calls), "the original retried exactly these lesions"
    for n, (ours, theirs) in enumerate(zip(fed, calls)):
        assert theirs["batch_object_id_same_as_prev_call"] == (n not in first_calls)
        assert ours["texts"] == list(theirs["text"][0].values())
        if "seg" in theirs:  # retries omit the (identical) crops
            cond = ours["cond"]
            assert torch.equal(cond[0, 0], theirs["seg"][0, 0])  # organ ids / 104, float32, bit for bit
            assert torch.equal(cond[0, 1], theirs["target"][0, 0].float())
            assert torch.equal(cond[0, 2], theirs["label"][0, 0].float())

    organs = np.isin(seg_grid, keys_used)
    final = SAL.to_network(compose_label(organs, occupied))
    assert np.array_equal(final, golden["final_samples"][0, 0].numpy())


def test_case_seg_comes_through_our_standardize_path(folder) -> None:
    """The golden's network array is what our own standardize of the input file gives, in the released layout."""
    data = _load(folder / "case01_dataset.pt.gz")
    img = nib.load(str(folder / "inputs" / CASES["case01"] / "totalseg.nii.gz"))
    grid = np.asarray(standardize_image(img, (1.0, 1.0, 1.0), is_label=True).dataobj)
    assert np.array_equal(SAL.to_network(grid), data["seg"][0].numpy())
