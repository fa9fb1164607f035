"""Options and conditioning shared by the diffusion mask and texture engines."""

from __future__ import annotations

from typing import Any

import torch

from ld_augment.errors import ConfigError
from ld_augment.diffusion import check_sampler
from ld_augment.nets import check_precision
from ld_augment.text import AttributeEncoder

RELEASED_STEPS = 200
RELEASED_ETA = 1.0


def check_sampling(steps: int, eta: float, precision: str, sampler: str = "ddim") -> tuple[int, float, str]:
    """Validate the sampling options up front (a typo should fail before checkpoints are read)."""
    if int(steps) != steps or not 1 <= int(steps) <= 1000:
        raise ConfigError(f"steps must be an integer in [1, 1000] (the released schedule has 1000), got {steps!r}")
    if float(eta) < 0:
        raise ConfigError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = the released setting), got {eta!r}")
    check_precision(precision)  # raises ConfigError listing the valid precisions
    check_sampler(sampler)
    return int(steps), float(eta), str(precision)


def check_crop_divisible(crop: tuple[int, int, int], divisor: int, what: str) -> None:
    bad = [c for c in crop if c % divisor]
    if bad:
        raise ConfigError(f"{what} {crop}: every size must be a multiple of {divisor} (the network's total stride)")


def encode_context(encoder: AttributeEncoder | None, texts: list[str], device: torch.device) -> torch.Tensor | None:
    """[1, n_attributes, dim] context for the UNet, or None when the network ignores text."""
    if encoder is None:
        return None
    with torch.inference_mode():
        return encoder.encode_attributes([texts]).float().to(device)


def uses_text(cfg: Any) -> bool:
    return cfg.context_dim is not None and not cfg.skip_context
