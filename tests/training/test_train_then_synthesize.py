"""Train your own LMNet, then synthesize with it: the checkpoint carries its text encoder to the engine."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.training import train_lmnet


def test_trained_lmnet_drives_the_diffusion_mask_engine(cases_dir, tmp_path) -> None:
    result = train_lmnet(cases_dir, tmp_path / "run", config="tiny", encoder="vocab",
                         encoder_options={"seed": 3}, steps=2, crop_size=(16, 16, 16), progress=False, seed=0)
    case_src = cases_dir / "case_0"
    case = preprocess_case(case_src / "ct.nii.gz", tmp_path / "case", organ="liver", lesion_type="metastasis",
                           seg=case_src / "totalseg.nii.gz", attributes={"size": "[[6 6 6]] pixel"},
                           seed=1, preview=False)
    options = {"mask": {"checkpoint": str(result.checkpoint), "encoder": "vocab", "steps": 2,
                        "eta": 0.0, "crop": [16, 16, 16]}}
    out = synthesize_case(case.case_dir, tmp_path / "out", mask_engine="diffusion", texture_engine="procedural",
                          engine_options=options, seed=0, preview=False)
    label = np.asarray(nib.load(str(out.label_path)).dataobj)
    assert (label == 2).any()
    record = json.loads((tmp_path / "out" / "synthesis.json").read_text())
    mask_prov = record["engine"]["mask"]
    assert mask_prov["engine"] == "diffusion"
    assert mask_prov["encoder_id"] == result.encoder_id
    assert mask_prov["checkpoints"]["lmnet"]["text_encoder"]["options"]["seed"] == 3


def test_engine_rebuilds_the_encoder_the_checkpoint_was_trained_with(cases_dir, tmp_path) -> None:
    from ld_augment.engines.registry import create_mask_engine

    result = train_lmnet(cases_dir, tmp_path / "run", config="tiny", encoder="vocab",
                         encoder_options={"seed": 3}, steps=1, crop_size=(16, 16, 16), progress=False)
    engine = create_mask_engine("diffusion", checkpoint=str(result.checkpoint), encoder="vocab", steps=2,
                                crop=(16, 16, 16))
    assert engine.encoder.options()["seed"] == 3  # not the default 0: the vectors the UNet was trained on


def test_training_crops_are_cut_in_the_network_layout_and_the_layout_is_recorded(cases_dir, tmp_path) -> None:
    """Training records its layout (SAL by default: the released convention) and the engine uses it; crops
    are cut from the case viewed in that layout, so crop sizes and origins are in network order."""
    from ld_augment.engines.registry import create_mask_engine
    from ld_augment.io.network_layout import layout
    from ld_augment.nets import load_checkpoint
    from ld_augment.training.crops import CropDataset, extract
    from ld_augment.training.data import find_cases, load_case

    scratch = train_lmnet(cases_dir, tmp_path / "a", config="tiny", steps=1, crop_size=(16, 16, 16), progress=False)
    assert load_checkpoint(scratch.checkpoint)[2]["extra"]["layout"] == "SAL"
    engine = create_mask_engine("diffusion", checkpoint=str(scratch.checkpoint), encoder="vocab", steps=1,
                                crop=(16, 16, 16))
    assert engine.provenance()["options"]["network_layout"] == "SAL"
    cases = find_cases(cases_dir, need=("label", "seg", "report"))
    for codes in ("SAL", "RAS"):
        item = CropDataset(cases, "lmnet", (8, 16, 24), seed=1, layout=codes)[5]
        assert item["x0"].shape == (1, 8, 16, 24) and item["cond"].shape == (3, 8, 16, 24)
        loaded = load_case(next(c for c in cases if c.case_id == item["case_id"]), spacing=(1.0, 1.0, 1.0),
                           need_ct=False, need_lesion=True)
        net = layout(codes).to_network(loaded.lesion)
        assert np.array_equal(item["x0"][0].numpy(), extract(net, item["start"].tolist(), (8, 16, 24), 0))
        assert item["x0"].sum() > 0
