"""The 3-D diffusion UNet of LMNet and LINet, state-dict compatible with the original `UNetModel`.

LMNet: 4 channels in (noisy mask, organ map/104, organ mask, bbox mask), eps out; cross-attention on the
attribute embeddings. LINet: 5 channels in (4 latent + mask), 5 out (latent eps + mask logit); the released
test config sets `skip_context`, so its transformers self-attend and the text is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from ld_augment.errors import ConfigError
from ld_augment.nets.attention import SpatialTransformer
from ld_augment.nets.blocks import Downsample, ResBlock, Upsample, group_norm, timestep_embedding
from ld_augment.nets.config import UNetConfig


class CondSequential(nn.Sequential):
    """A Sequential that hands the timestep embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet3D(nn.Module):
    """Timestep- and text-conditioned 3-D UNet; `forward(x, timesteps, context=None) -> Tensor`.

    Inputs are [B, C, D1, D2, D3] with every spatial size divisible by 2**(len(channel_mult)-1).
    Computation runs in the parameters' dtype (the original's use_fp16 path after `.half()`); the
    output is returned in the input's dtype.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.context_dim is not None:
            self.context_linear_projection = nn.Linear(cfg.context_dim, cfg.context_dim, bias=False)

        def transformer(ch: int) -> SpatialTransformer:
            heads, dim_head = cfg.heads_for(ch)
            if ch % 32:
                raise ConfigError(f"attention at width {ch}: the transformer's GroupNorm needs a multiple of 32")
            if cfg.skip_context and ch != cfg.context_dim:
                raise ConfigError(
                    f"skip_context=True needs attention width == context_dim, got {ch} != {cfg.context_dim}"
                )
            return SpatialTransformer(ch, heads, dim_head, cfg.transformer_depth, cfg.context_dim, cfg.dropout,
                                      cfg.use_checkpoint)

        def resblock(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, cfg.dropout, cfg.use_checkpoint)

        self.input_blocks = nn.ModuleList([CondSequential(nn.Conv3d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(CondSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        middle: list[nn.Module] = [resblock(ch, ch)]
        if cfg.attention_resolutions:
            middle.append(transformer(ch))
        middle.append(resblock(ch, ch))
        self.middle_block = CondSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(CondSequential(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv3d(mc, cfg.out_channels, 3, padding=1))

    @property
    def spatial_divisor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2 ** (len(self.cfg.channel_mult) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"UNet3D expects [B, {self.cfg.in_channels}, D1, D2, D3], got {list(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.spatial_divisor]
        if bad:
            raise ValueError(f"UNet3D spatial sizes {list(x.shape[2:])} must be multiples of {self.spatial_divisor}")
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(dtype))
        if self.cfg.skip_context or self.cfg.context_dim is None:
            context = None
        elif context is not None:
            context = self.context_linear_projection(context.to(dtype))

        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)
