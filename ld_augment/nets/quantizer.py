"""Vector quantizer of the LesionDiffusion VQ-GAN (nearest codebook entry, straight-through gradient).

Distances are computed in chunks of flattened latent vectors: a whole-CT latent (10.5 M vectors x 2048 codes)
would otherwise need an ~86 GB distance matrix (reference/COSTS.md). Row-wise argmin makes chunking exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_CHUNK_VECTORS = 65536  # 65,536 x 2048 codes x 4 bytes = 512 MiB of distances at most


class VectorQuantizer(nn.Module):
    """Codebook `embedding` [n_embed, embed_dim]; loss = mse(sg(z_q), z) + beta * mse(z_q, sg(z))."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, flat: torch.Tensor, chunk_vectors: int = DEFAULT_CHUNK_VECTORS) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` [N, embed_dim] (first index on ties)."""
        codes = self.embedding.weight.to(flat.dtype)
        code_sq = torch.sum(codes**2, dim=1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        step = max(1, int(chunk_vectors))
        for start in range(0, flat.shape[0], step):
            part = flat[start:start + step]
            dist = torch.sum(part**2, dim=1, keepdim=True) + code_sq - 2 * torch.matmul(part, codes.t())
            out[start:start + step] = torch.argmin(dist, dim=1)
        return out

    def forward(self, z: torch.Tensor, chunk_vectors: int = DEFAULT_CHUNK_VECTORS
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Quantize z [B, C, *spatial] -> (z_q, loss, info) with info = {indices [B, *spatial], perplexity}."""
        z_last = z.movedim(1, -1).contiguous()
        flat = z_last.reshape(-1, self.embed_dim)
        idx = self.nearest(flat.detach(), chunk_vectors)
        z_q = self.embedding(idx).to(z.dtype).reshape(z_last.shape)
        loss = torch.mean((z_q.detach() - z_last) ** 2) + self.beta * torch.mean((z_q - z_last.detach()) ** 2)
        z_q = z_last + (z_q - z_last).detach()  # straight-through estimator
        usage = torch.bincount(idx, minlength=self.n_embed).to(torch.float32) / max(1, idx.numel())
        perplexity = torch.exp(-torch.sum(usage * torch.log(usage + 1e-10)))
        info = {"indices": idx.reshape(z_last.shape[:-1]), "perplexity": perplexity}
        return z_q.movedim(-1, 1), loss, info

    def codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for integer indices [B, *spatial] -> [B, embed_dim, *spatial]."""
        return self.embedding(indices.long()).movedim(-1, 1)
