"""The 3-D VQ-GAN autoencoder of LesionDiffusion, state-dict compatible with the original `VQModel`.

LINet diffuses on the PRE-quantisation latent (`encode`); `decode` quantises first, as the original
`VQModelInterface.decode` does. The CT is expected normalised to [0, 1] (see ARCHITECTURE.md section 3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ld_augment.nets.config import VQConfig
from ld_augment.nets.precision import FP32GroupNorm
from ld_augment.nets.quantizer import DEFAULT_CHUNK_VECTORS, VectorQuantizer


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return FP32GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-swish-conv-norm-swish-dropout-conv plus a 1x1 shortcut when widths differ (no timestep input)."""

    def __init__(self, ch_in: int, ch_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(ch_in, groups)
        self.conv1 = nn.Conv3d(ch_in, ch_out, 3, padding=1)
        self.norm2 = _norm(ch_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(ch_out, ch_out, 3, padding=1)
        if ch_in != ch_out:
            self.nin_shortcut = nn.Conv3d(ch_in, ch_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Down(nn.Module):
    """Pad one voxel on the high side of each axis, then a stride-2 valid conv (size n -> n // 2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups, dropout)
        self.block_2 = ResnetBlock(ch, ch, groups, dropout)  # the original's mid attention is Identity here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv3d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(ch, cfg.ch * mult, g, cfg.dropout))
                ch = cfg.ch * mult
            stage.block = nn.ModuleList(blocks)
            if level in cfg.sample_depth:
                stage.downsample = _Down(ch)
            self.down.append(stage)
        self.mid = _Mid(ch, g, cfg.dropout)
        self.norm_out = _norm(ch, g)
        self.conv_out = nn.Conv3d(ch, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        ch = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv3d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _Mid(ch, g, cfg.dropout)
        stages: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            stage = nn.Module()
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, cfg.ch * cfg.ch_mult[level], g, cfg.dropout))
                ch = cfg.ch * cfg.ch_mult[level]
            stage.block = nn.ModuleList(blocks)
            if cfg.num_res_blocks - level in cfg.sample_depth:  # the original's rule, see VQConfig
                stage.upsample = _Up(ch)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)  # indexed by level, processed last level first
        self.norm_out = _norm(ch, g)
        self.conv_out = nn.Conv3d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQModel3D(nn.Module):
    """Encoder + vector quantizer + decoder. Computation runs in the parameters' dtype.

    `quantize` is the quantizer submodule (its name is fixed by the checkpoint keys), so `model.quantize(h)`
    returns (z_q, loss, info); `quantize_latent` is the same with the input cast to the parameters' dtype.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.quant_conv = nn.Conv3d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv3d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def _dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, in, *S] -> pre-quantisation latent [B, embed_dim, *S/f] (what LINet diffuses on)."""
        return self.quant_conv(self.encoder(x.to(self._dtype)))

    def quantize_latent(self, h: torch.Tensor, chunk_vectors: int = DEFAULT_CHUNK_VECTORS
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Latent -> (z_q, codebook loss, {indices [B, *S], perplexity}); memory bounded by `chunk_vectors`."""
        return self.quantize(h.to(self._dtype), chunk_vectors)

    def decode_quantized(self, z_q: torch.Tensor) -> torch.Tensor:
        """Already-quantised latent -> image (post_quant_conv + decoder)."""
        return self.decoder(self.post_quant_conv(z_q.to(self._dtype)))

    def decode(self, h: torch.Tensor, chunk_vectors: int = DEFAULT_CHUNK_VECTORS) -> torch.Tensor:
        """Pre-quantisation latent -> image: quantise first, as VQModelInterface.decode does."""
        z_q, _, _ = self.quantize_latent(h, chunk_vectors)
        return self.decode_quantized(z_q)

    def codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices [B, *S] -> codes [B, embed_dim, *S]."""
        return self.quantize.codebook_entry(indices)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices [B, *S] -> image."""
        return self.decode_quantized(self.codebook_entry(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (reconstruction, codebook loss), as the original VQModel.forward."""
        z_q, loss, _ = self.quantize_latent(self.encode(x))
        return self.decode_quantized(z_q), loss

