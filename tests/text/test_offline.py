"""The offline vocabulary-embedding encoder: determinism, synonyms, unknown and padding rows, checkpoints."""

from __future__ import annotations

import pytest
import torch

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.resources import load_json_resource
from ld_augment.text import VocabEmbeddingEncoder, available_encoders, create_encoder, normalize_phrase


def test_same_options_give_identical_encoders_without_global_rng() -> None:
    torch.manual_seed(123)
    a = VocabEmbeddingEncoder(seed=7)
    torch.manual_seed(456)
    b = VocabEmbeddingEncoder(seed=7)
    assert torch.equal(a.embedding.weight, b.embedding.weight)
    assert not torch.equal(a.embedding.weight, VocabEmbeddingEncoder(seed=8).embedding.weight)
    texts = [["hypodense lesion", "liver", "round-like"], ["cystic"]]
    assert torch.equal(a.encode_attributes(texts), b.encode_attributes(texts))


def test_every_synonym_group_shares_one_row_and_groups_differ() -> None:
    enc = VocabEmbeddingEncoder()
    rows = []
    for groups in load_json_resource("vocab", "attribute_vocabulary.json").values():
        for group in groups:
            idx = {enc.table.lookup(p) for p in group}
            assert len(idx) == 1, group
            rows.append(idx.pop())
    assert len(set(rows)) == len(rows) and min(rows) >= 2
    assert enc.table.lookup("Low density lesion ") == enc.table.lookup("hypodense lesion")
    assert enc.table.lookup("kidney_right") == enc.table.lookup("Kidney Right")


def test_padding_is_zero_and_unknown_strings_share_the_unknown_row() -> None:
    enc = VocabEmbeddingEncoder(output_dim=64)
    out = enc.encode_attributes([["liver", "a phrase nobody wrote", "another unseen one"], ["liver"]])
    assert out.shape == (2, 3, 64)
    assert torch.equal(out[1, 1:], torch.zeros(2, 64))  # "" padding
    assert torch.equal(out[0, 1], out[0, 2]) and out[0, 1].abs().sum() > 0
    assert enc.unknown_phrases(["liver", "a phrase nobody wrote"]) == ["a phrase nobody wrote"]


def test_extra_phrases_get_rows_and_change_the_fingerprint() -> None:
    base = VocabEmbeddingEncoder()
    extended = VocabEmbeddingEncoder(extra_phrases=[["calcified rim", "rim calcification"]])
    assert base.table.lookup("calcified rim") == 1
    assert extended.table.lookup("rim calcification") == extended.table.lookup("calcified rim") > 1
    assert base.options()["vocab_fingerprint"] != extended.options()["vocab_fingerprint"]


def test_embedding_is_trainable_and_padding_gets_no_gradient() -> None:
    enc = VocabEmbeddingEncoder(output_dim=8)
    enc.encode_attributes([["liver", ""]]).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[enc.table.lookup("liver")].abs().sum() > 0 and grad[0].abs().sum() == 0


def test_registry_round_trip_and_mismatch_errors() -> None:
    assert {"vocab", "biomedclip"} <= set(available_encoders())
    enc = create_encoder("vocab", output_dim=32, seed=3)
    again = create_encoder(enc.encoder_id, **enc.options())
    assert torch.equal(enc.embedding.weight, again.embedding.weight)
    with pytest.raises(ConfigError, match="fingerprint"):
        create_encoder("vocab", vocab_fingerprint="0000")
    with pytest.raises(ConfigError, match="valid: biomedclip, vocab"):
        create_encoder("minilm")
    enc.check_compatible("ld-vocab-embedding-v1")
    with pytest.raises(CheckpointError, match="biomedclip-pubmedbert-256"):
        enc.check_compatible("biomedclip-pubmedbert-256")


def test_bad_batches_are_config_errors() -> None:
    enc = VocabEmbeddingEncoder(output_dim=8)
    with pytest.raises(ConfigError):
        enc.encode_attributes(["liver"])  # a list of strings, not a batch of lists
    with pytest.raises(ConfigError):
        enc.encode_attributes([[], []])


def test_normalize_phrase() -> None:
    assert normalize_phrase("  Enhanced   CT, ") == "enhanced ct"
    assert normalize_phrase("urinary_bladder") == "urinary bladder"
