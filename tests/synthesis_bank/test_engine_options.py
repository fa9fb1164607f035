"""Recipes pass engine options (weights, steps) to registry engines, built once per build and hashed."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import ld_augment.pipeline.synthesize as synth
from ld_augment.nets import LINET_TINY, VQ_TINY, build_network, save_checkpoint
from ld_augment.resources import example_ct, example_segmentation
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID
from synthesis_bank.builder import build_bank
from synthesis_bank.recipe import Recipe


def test_bank_with_diffusion_texture_from_recipe_options(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    linet = save_checkpoint(tmp_path / "linet.pt", build_network(LINET_TINY), LINET_TINY, encoder_id=VOCAB_ID)
    vq = save_checkpoint(tmp_path / "vq.pt", build_network(VQ_TINY), VQ_TINY, encoder_id=None)
    (tmp_path / "sources.txt").write_text(f"{example_ct()},{example_segmentation()}\n")
    created = []
    real_create = synth.create_texture_engine
    monkeypatch.setattr(synth, "create_texture_engine",
                        lambda name, **kw: created.append(name) or real_create(name, **kw))
    recipe = Recipe.from_dict({
        "sources": {"list_file": "sources.txt"}, "organs": ["liver"], "lesion_types": {"cyst": 1.0},
        "attributes": {"size": "[[8 8 8]] pixel"}, "variants_per_source": 2, "segmentation": "error",
        "spacing": [2.0, 2.0, 2.0],
        "engine": {"texture": "diffusion",
                   "texture_options": {"checkpoint": "linet.pt", "vq_checkpoint": "vq.pt", "steps": 2,
                                       "crop": [16, 16, 16]}}}, origin="test", base_dir=tmp_path)
    summary = build_bank(recipe, tmp_path / "bank", progress=False)
    assert summary.ok, summary.format_table()
    assert created == ["diffusion"]  # one engine for the whole build, not one per case
    entries = [json.loads(line) for line in (tmp_path / "bank" / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 2
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (linet, vq)}
    for e in entries:
        assert e["checkpoints"] == {"texture.checkpoint": sha[linet], "texture.vq_checkpoint": sha[vq]}



def test_batch_cases_pools_lesions_of_several_cases_and_equals_one_case_at_a_time(tmp_path, monkeypatch) -> None:
    """--batch-cases 3: three cases are made together, their LMNet first draws in one call; the bank equals the
    one-case-at-a-time bank (labels exactly, HU within float reassociation)."""
    import nibabel as nib
    import numpy as np

    import ld_augment.engines.diffusion.mask as mask_module
    from ld_augment.engines.diffusion.sampling import sample_lmnet
    from ld_augment.errors import ConfigError
    from ld_augment.nets import LMNET_TINY

    torch.manual_seed(0)
    lmnet = save_checkpoint(tmp_path / "lmnet.pt", build_network(LMNET_TINY), LMNET_TINY, encoder_id=VOCAB_ID)
    linet = save_checkpoint(tmp_path / "linet.pt", build_network(LINET_TINY), LINET_TINY, encoder_id=VOCAB_ID)
    vq = save_checkpoint(tmp_path / "vq.pt", build_network(VQ_TINY), VQ_TINY, encoder_id=None)
    (tmp_path / "sources.txt").write_text(f"{example_ct()},{example_segmentation()}\n")
    recipe = Recipe.from_dict({
        "sources": {"list_file": "sources.txt"}, "organs": ["liver"], "lesion_types": {"cyst": 1.0},
        "attributes": {"size": "[[8 8 8]] pixel"}, "variants_per_source": 3, "segmentation": "error",
        "spacing": [2.0, 2.0, 2.0],
        "engine": {"mask": "diffusion", "texture": "diffusion",
                   "mask_options": {"checkpoint": "lmnet.pt", "encoder": "vocab", "steps": 2, "crop": [16, 16, 16],
                                    "min_voxels": 0, "selection": "released"},
                   "texture_options": {"checkpoint": "linet.pt", "vq_checkpoint": "vq.pt", "steps": 2,
                                       "crop": [16, 16, 16]}}}, origin="test", base_dir=tmp_path)
    batches: list[int] = []

    def counting(unet, cond, *args, **kwargs):
        batches.append(int(cond.shape[0]))
        return sample_lmnet(unet, cond, *args, **kwargs)

    monkeypatch.setattr(mask_module, "sample_lmnet", counting)
    banks = {}
    for n in (3, 1):
        batches.clear()
        summary = build_bank(recipe, tmp_path / f"bank{n}", progress=False, batch_cases=n)
        assert summary.ok and len(summary.done) == 3, summary.format_table()
        banks[n] = list(batches)
    assert banks[3][0] == 3 and set(banks[1]) == {1}  # three cases' first lesions in one LMNet call
    for case in sorted((tmp_path / "bank1" / "labelsTr").iterdir()):
        one, three = (np.asarray(nib.load(str(tmp_path / f"bank{n}" / "labelsTr" / case.name)).dataobj) for n in (1, 3))
        assert one.any() and np.array_equal(one, three)
    for image in sorted((tmp_path / "bank1" / "imagesTr").iterdir()):
        one, three = (np.asarray(nib.load(str(tmp_path / f"bank{n}" / "imagesTr" / image.name)).dataobj, np.float32)
                      for n in (1, 3))
        assert np.abs(one - three).max() <= 1.0
    with pytest.raises(ConfigError, match="--case-timeout"):
        build_bank(recipe, tmp_path / "bank_t", progress=False, batch_cases=2, case_timeout_s=60)
