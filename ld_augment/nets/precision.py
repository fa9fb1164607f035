"""Device and precision helpers: fp32 by default, bf16/fp16 autocast as an option, CPU or CUDA."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ld_augment.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Parse a device string; asking for CUDA without a GPU is a ConfigError, not a late crash."""
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise ConfigError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in _DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; valid: {list(PRECISIONS)}")
    return _DTYPES[precision]


def autocast_context(device: str | torch.device, precision: str = "fp32") -> ContextManager:
    """A context running matmuls/convs in bf16/fp16 while weights stay fp32; a no-op for fp32.

    Autocast keeps numerically sensitive ops (norms, softmax) in fp32, which is safer than the
    original's whole-module `.half()`.
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    dev = resolve_device(device)
    return torch.autocast(device_type=dev.type, dtype=dtype)
