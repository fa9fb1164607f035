"""Builders shared by the nets tests (weight-less layouts, Lightning-style wrapping)."""

from __future__ import annotations

from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64}


def fake_state(layout: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A weight-less state dict (meta tensors) with exactly the layout's keys, shapes and dtypes."""
    return {key: torch.empty(shape, dtype=DTYPES[dtype], device="meta") for key, shape, dtype in layout["entries"]}


def to_lightning(state: dict[str, torch.Tensor], *, ema_offset: float | None = None,
                 prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Wrap a bare UNet state dict the way MaskDiffusion saves it (+ optional EMA copies shifted by ema_offset)."""
    out: dict[str, torch.Tensor] = {"betas": torch.linspace(1e-4, 2e-2, 10)}
    out.update({prefix + k: v for k, v in state.items()})
    if ema_offset is not None:
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
        lead = "diffusion_model" if prefix == "model.diffusion_model." else ""
        out.update({"model_ema." + lead + k.replace(".", ""): v + ema_offset for k, v in state.items()})
    return out
