"""Spatial transformer over 3-D feature maps: self-attention, cross-attention on the text context, feed-forward.

Attention runs through `F.scaled_dot_product_attention` so the LMNet token count (16x38x38 = 23,104) never
materialises the N x N score matrix (4.3 GB in fp32 with a plain einsum, see reference/COSTS.md). The
"materialized" backend computes softmax(q k^T / sqrt(d)) v explicitly, as the original did: the faithful
baseline of benchmarks/bench_diffusion_engine.py (``set_attention_backend(model, "materialized")``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ld_augment.errors import ConfigError
from ld_augment.nets.blocks import maybe_checkpoint
from ld_augment.nets.precision import FP32GroupNorm, FP32LayerNorm

ATTENTION_BACKENDS = ("sdpa", "materialized")


def materialized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The original's attention: the full [B, heads, N, M] score matrix, softmax over keys, in the inputs' dtype."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1), v)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every attention layer of ``model`` to ``backend`` ("sdpa" default, "materialized"); returns model."""
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; valid: {list(ATTENTION_BACKENDS)}")
    for module in model.modules():
        if isinstance(module, CrossAttention):
            module.backend = backend
    return model


class CrossAttention(nn.Module):
    """Multi-head attention; keys/values come from `context` (or from `x` itself when context is None)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.backend = "sdpa"
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        if source.shape[-1] != self.to_k.in_features:
            raise ValueError(
                f"attention keys need {self.to_k.in_features}-d inputs, got {source.shape[-1]}-d "
                f"({'self-attention on the image tokens' if context is None else 'context'}); "
                "pass a context of that width or use a config whose attention width equals context_dim"
            )
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(source)), split(self.to_v(source))
        if k.dtype != q.dtype:  # context may arrive in another dtype than the image tokens
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.backend == "materialized":
            out = materialized_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """Linear(d, 4d) - exact GELU - Dropout - Linear(4d, d); not gated (keys `net.0.0`, `net.2`)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(dropout), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual connection."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, dropout: float = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1 = FP32LayerNorm(dim)
        self.norm2 = FP32LayerNorm(dim)
        self.norm3 = FP32LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm(32, eps 1e-6) - 1x1 conv in - tokens in (D1, D2, D3) row-major order - blocks - 1x1 conv out - residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 dropout: float = 0.0, use_checkpoint: bool = False) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = FP32GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv3d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, use_checkpoint) for _ in range(depth)
        )
        self.proj_out = nn.Conv3d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, _, d1, d2, d3 = x.shape
        h = self.proj_in(self.norm(x))
        c = h.shape[1]
        h = h.reshape(b, c, -1).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.transpose(1, 2).reshape(b, c, d1, d2, d3)
        return x + self.proj_out(h)
