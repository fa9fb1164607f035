"""The default offline encoder: a learned embedding of the closed attribute vocabulary.

Why this and not a pretrained sentence model: the conditioning strings come from a closed vocabulary (the
attribute vocabulary, organ names, cavity phrases), so one learned vector per phrase carries all the information
a network trained from scratch can use, needs no download or third-party weights, costs ~0.1 ms per batch and is
trained jointly with the UNet. Synonyms ("hypodense lesion" / "low density lesion") share a row, so the network
never has to learn that they mean the same. See benchmarks/bench_text_encoders.py for the measurements.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ld_augment.errors import ConfigError
from ld_augment.organs.registry import CAVITY_VALUES, class_map
from ld_augment.resources import load_json_resource
from ld_augment.text.base import AttributeEncoder

ENCODER_ID = "ld-vocab-embedding-v1"
PAD_INDEX = 0
UNKNOWN_INDEX = 1


def normalize_phrase(text: str) -> str:
    """Case, underscores, repeated spaces and surrounding " ,." do not change a phrase's meaning."""
    return re.sub(r"\s+", " ", text.replace("_", " ").lower()).strip(" ,.;")


def default_phrase_groups() -> list[list[str]]:
    """Synonym groups: the packaged attribute vocabulary, then TotalSegmentator v1 organ names, then cavities."""
    groups: list[list[str]] = []
    for category_groups in load_json_resource("vocab", "attribute_vocabulary.json").values():
        groups.extend(list(group) for group in category_groups)
    groups.extend([name] for _, name in sorted(class_map("v1").items()))
    groups.extend([cavity] for cavity in CAVITY_VALUES)
    return groups


class PhraseTable:
    """Normalised phrase -> row index; row 0 is padding (""), row 1 unknown, then one row per synonym group."""

    def __init__(self, groups: Iterable[Sequence[str]]) -> None:
        self.index: dict[str, int] = {}
        self.num_rows = 2
        for group in groups:
            keys = [normalize_phrase(p) for p in group if normalize_phrase(p)]
            new = [k for k in keys if k not in self.index]
            if not new:
                continue  # every phrase already has a row (a repeated group or an organ listed twice)
            for key in new:
                self.index[key] = self.num_rows
            self.num_rows += 1

    def lookup(self, text: str) -> int:
        key = normalize_phrase(text)
        if not key:
            return PAD_INDEX
        return self.index.get(key, UNKNOWN_INDEX)

    def fingerprint(self) -> str:
        """Short hash of the phrase -> row mapping (a checkpoint trained on another table must not load)."""
        text = "\n".join(f"{k}\t{v}" for k, v in sorted(self.index.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class VocabEmbeddingEncoder(AttributeEncoder):
    """One learned vector per synonym group; unknown strings share a learned "unknown" row, "" is a zero vector.

    Weights are initialised from ``seed`` with a private generator (no global RNG), N(0, 1) like nn.Embedding,
    so two encoders built with the same options are identical before training.
    """

    encoder_id = ENCODER_ID

    def __init__(self, output_dim: int = 512, *, extra_phrases: Sequence[Sequence[str]] = (), seed: int = 0) -> None:
        super().__init__()
        if output_dim < 1:
            raise ConfigError(f"output_dim must be >= 1, got {output_dim}")
        self.output_dim = int(output_dim)
        self._extra = [list(group) for group in extra_phrases]
        self._seed = int(seed)
        self.table = PhraseTable([*default_phrase_groups(), *self._extra])
        self.embedding = nn.Embedding(self.table.num_rows, self.output_dim, padding_idx=PAD_INDEX)
        gen = torch.Generator().manual_seed(self._seed)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(self.table.num_rows, self.output_dim, generator=gen))
            self.embedding.weight[PAD_INDEX].zero_()

    def options(self) -> dict[str, Any]:
        return {"output_dim": self.output_dim, "extra_phrases": self._extra, "seed": self._seed,
                "vocab_fingerprint": self.table.fingerprint()}

    def indices(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.table.lookup(t) for t in texts], dtype=torch.long)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embedding(self.indices(texts).to(self.embedding.weight.device))

    def unknown_phrases(self, texts: Iterable[str]) -> list[str]:
        """The strings that fall into the "unknown" row (worth a warning when training)."""
        return [t for t in texts if self.table.lookup(t) == UNKNOWN_INDEX]


def build_vocab_encoder(output_dim: int = 512, *, extra_phrases: Sequence[Sequence[str]] = (), seed: int = 0,
                 vocab_fingerprint: str | None = None) -> VocabEmbeddingEncoder:
    """The "vocab" registry entry: builds the encoder and verifies a recorded vocabulary fingerprint."""
    enc = VocabEmbeddingEncoder(output_dim, extra_phrases=extra_phrases, seed=seed)
    if vocab_fingerprint is not None and vocab_fingerprint != enc.table.fingerprint():
        raise ConfigError(
            f"vocabulary fingerprint {vocab_fingerprint} recorded in the checkpoint differs from this install's "
            f"{enc.table.fingerprint()} (the packaged attribute vocabulary or extra_phrases changed)"
        )
    return enc

