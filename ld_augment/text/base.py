"""The attribute-encoder interface: a report's attribute strings -> the UNet's cross-attention context.

The original embeds every attribute value separately (one pooled vector per string) and pads each sample's list
with empty strings to the longest list in the batch (ARCHITECTURE.md 3). Every encoder here keeps that contract,
so the networks see ``[B, n_attributes, dim]`` whichever encoder is used. ``encoder_id`` is recorded in
checkpoints: a network trained with one encoder is meaningless with another, so a mismatch is an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.text.registry import ENCODER_IDS

PAD_TEXT = ""


class AttributeEncoder(nn.Module, ABC):
    """Maps attribute strings to vectors of size ``output_dim``; subclasses implement ``encode_texts``."""

    encoder_id: str = ""
    output_dim: int = 512

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), output_dim] float32 on the encoder's device; "" is the padding value."""

    def options(self) -> dict[str, Any]:
        """Constructor options that rebuild an equivalent encoder with ``create_encoder`` (saved in checkpoints)."""
        return {}

    def encode_attributes(self, batch: Sequence[Sequence[str]]) -> torch.Tensor:
        """[B, n_max, output_dim]: one vector per attribute, lists padded with "" to the longest, as the original."""
        if isinstance(batch, str) or any(isinstance(item, str) for item in batch):
            raise ConfigError("encode_attributes takes a batch of attribute lists, e.g. [['round-like', 'liver']]")
        if len(batch) == 0:
            raise ConfigError("encode_attributes needs at least one sample")
        n_max = max(len(item) for item in batch)
        if n_max == 0:
            raise ConfigError("every sample has an empty attribute list; at least one attribute string is needed")
        flat = [text for item in batch for text in (*item, *([PAD_TEXT] * (n_max - len(item))))]
        return self.encode_texts(flat).reshape(len(batch), n_max, -1)

    def forward(self, batch: Sequence[Sequence[str]]) -> torch.Tensor:
        return self.encode_attributes(batch)

    def check_compatible(self, recorded_id: str, *, source: str = "checkpoint") -> None:
        """Raise CheckpointError unless ``recorded_id`` (from a checkpoint) is this encoder's id."""
        if recorded_id != self.encoder_id:
            raise CheckpointError(
                f"{source} was trained with text encoder {recorded_id!r} but this encoder is {self.encoder_id!r}; "
                f"build the matching one (known: {', '.join(sorted(ENCODER_IDS))})"
            )
