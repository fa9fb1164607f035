"""Recipes pass engine options (weights, steps) to registry engines, built once per build and hashed."""

from __future__ import annotations

import hashlib
import json

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

