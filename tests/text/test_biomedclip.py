"""BiomedCLIP text tower: builds offline from local files, loads `text.*` weights, readable errors, cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from ld_augment.errors import CheckpointError, MissingDependencyError  # noqa: E402
from ld_augment.resources import biomedclip_dir  # noqa: E402
from ld_augment.text import BiomedCLIPEncoder, create_encoder, load_text_state_dict  # noqa: E402
from ld_augment.text.biomedclip import WEIGHTS_FILE  # noqa: E402

TEXTS = ["hypodense lesion", "round-like", "liver", "", "within the lumen of a hollow organ"]


@pytest.fixture(scope="module")
def released_tower() -> BiomedCLIPEncoder:
    """The packaged (released-size) config with random weights: the expensive build, done once."""
    torch.manual_seed(0)  # HF initialises from the global RNG; only reproducibility of this test depends on it
    return BiomedCLIPEncoder(random_weights=True)


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    """Same tokenizer, a 2-layer 32-wide BERT: exercises the loading code without a 440 MB weights file."""
    folder = tmp_path / "tiny_biomedclip"
    shutil.copytree(biomedclip_dir(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _save_open_clip_checkpoint(encoder: BiomedCLIPEncoder, path: Path) -> None:
    """An open_clip-style full checkpoint: text.* keys plus a vision key and an old-style position_ids buffer."""
    state = {f"text.{k}": v.clone() for k, v in encoder.tower.state_dict().items()}
    state["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]
    state["visual.trunk.cls_token"] = torch.zeros(1, 1, 8)
    state["logit_scale"] = torch.tensor(4.6)
    torch.save(state, path)


@torch.no_grad()
def test_released_config_builds_offline_and_gives_one_vector_per_attribute(released_tower: BiomedCLIPEncoder) -> None:
    n_params = sum(p.numel() for p in released_tower.tower.parameters())
    assert n_params == pytest.approx(109.7e6, rel=1e-3)
    assert len(released_tower.tower.state_dict()) == 199
    out = released_tower.encode_attributes([TEXTS, TEXTS[:2]])
    assert out.shape == (2, len(TEXTS), 512) and out.dtype == torch.float32
    # Padding of the short list is the embedding of "" (as the original pads with empty strings).
    torch.testing.assert_close(out[1, 2:], released_tower.encode_texts([""] * 3))
    torch.testing.assert_close(out[1, :2], out[0, :2])
    assert not torch.allclose(out[0, 0], out[0, 1])


@torch.no_grad()
def test_trimmed_padding_gives_the_256_token_result(released_tower: BiomedCLIPEncoder) -> None:
    assert released_tower.tokenize(["liver"]).shape[1] < 256
    trimmed = released_tower._compute(TEXTS)
    released_tower.trim_padding = False
    try:
        assert released_tower.tokenize(["liver"]).shape[1] == 256
        full = released_tower._compute(TEXTS)
    finally:
        released_tower.trim_padding = True
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_cache_computes_each_string_once_and_evicts_lru(released_tower: BiomedCLIPEncoder, monkeypatch) -> None:
    released_tower.clear_cache()
    calls: list[list[str]] = []
    real = released_tower._compute
    monkeypatch.setattr(released_tower, "_compute", lambda texts: calls.append(list(texts)) or real(texts))
    first = released_tower.encode_texts(["liver", "cystic", "liver"])
    second = released_tower.encode_texts(["cystic", "liver"])
    assert calls == [["liver", "cystic"]]
    assert torch.equal(first[1], second[0]) and torch.equal(first[0], first[2])
    released_tower.cache_size = 2
    try:
        released_tower.encode_texts(["stone"])  # evicts "cystic" (least recently used: "liver" came after it)
        released_tower.encode_texts(["liver", "cystic"])
        assert calls[-1] == ["cystic"] and len(released_tower._cache) == 2
    finally:
        released_tower.cache_size = 4096


def test_weights_file_with_text_keys_loads(tiny_config: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = BiomedCLIPEncoder(config_dir=tiny_config, random_weights=True)
    _save_open_clip_checkpoint(source, tmp_path / WEIGHTS_FILE)
    state = load_text_state_dict(tmp_path / WEIGHTS_FILE)
    assert "transformer.embeddings.position_ids" not in state and set(state) == set(source.tower.state_dict())
    torch.manual_seed(2)  # a different random init, overwritten by the file
    loaded = create_encoder("biomedclip", weights=tmp_path, config_dir=tiny_config)  # folder -> the .bin inside
    torch.testing.assert_close(loaded.encode_texts(TEXTS), source.encode_texts(TEXTS))
    assert loaded.options()["weights"] == str(tmp_path / WEIGHTS_FILE)


def test_missing_weights_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=WEIGHTS_FILE):
        BiomedCLIPEncoder()
    with pytest.raises(MissingDependencyError, match=str(tmp_path / WEIGHTS_FILE)):
        BiomedCLIPEncoder(weights=tmp_path)
    with pytest.raises(MissingDependencyError, match="nope.bin"):
        BiomedCLIPEncoder(weights=tmp_path / "nope.bin")


def test_wrong_weights_are_checkpoint_errors(tiny_config: Path, tmp_path: Path) -> None:
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "vision_only.bin")
    with pytest.raises(CheckpointError, match="no 'text.\\*' keys"):
        BiomedCLIPEncoder(weights=tmp_path / "vision_only.bin", config_dir=tiny_config)
    source = BiomedCLIPEncoder(config_dir=tiny_config, random_weights=True)
    state = {f"text.{k}": v for k, v in source.tower.state_dict().items()}
    state["text.proj.0.weight"] = torch.zeros(7, 7)
    del state["text.proj.2.weight"]
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(CheckpointError, match="1 missing.*proj.2.weight.*shape mismatches.*proj.0.weight"):
        BiomedCLIPEncoder(weights=tmp_path / "broken.bin", config_dir=tiny_config)
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.bin"):
        BiomedCLIPEncoder(weights=tmp_path / "garbage.bin", config_dir=tiny_config)


def test_tower_stays_frozen_in_train_mode(tiny_config: Path) -> None:
    enc = BiomedCLIPEncoder(config_dir=tiny_config, random_weights=True).train()
    assert not enc.tower.training
    assert not any(p.requires_grad for p in enc.tower.parameters())
    torch.testing.assert_close(enc._compute(["liver"]), enc._compute(["liver"]))
