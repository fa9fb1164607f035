"""Device and precision helpers: "auto" = bf16 autocast on CUDA and fp32 on CPU; fp32 norms; optional compile.

Mixed precision runs the convolutions and attention matmuls in bf16/fp16 while weights stay fp32 and the
norms compute in fp32 (``FP32GroupNorm``/``FP32LayerNorm``, on every device: CPU autocast would otherwise run
them in the low precision). The samplers' arithmetic stays float32 because the engines keep the latents
float32 and cast the network's output back (see engines/diffusion/sampling.py).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ld_augment.errors import ConfigError

from torch import nn
from torch.nn import functional as F

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: torch.compile modes; "reduce-overhead" also captures the fixed-shape step in CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


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


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {list(PRECISIONS)}")
    return precision


#: What the original ran the released networks in on a GPU: LMNet fp32 (its test config sets use_fp16 false),
#: LINet fp16 (use_fp16 true and the module halved); ours runs fp16 as autocast with fp32 norms.
RELEASED_PRECISION = {"lmnet": "fp32", "linet": "fp16"}


def resolve_precision(precision: str, device: str | torch.device, released_as: str | None = None) -> str:
    """"auto" -> "bf16" on CUDA (tensor cores; bf16's range needs no loss scaling), "fp32" elsewhere.

    released_as ("lmnet" / "linet"): the network is a released file, so "auto" on CUDA is the precision the
    original ran it in (``RELEASED_PRECISION``); bf16 stays available by asking for it.
    """
    if check_precision(precision) != "auto":
        return precision
    if torch.device(device).type != "cuda":
        return "fp32"
    return RELEASED_PRECISION[released_as] if released_as is not None else "bf16"


def precision_dtype(precision: str) -> torch.dtype:
    if check_precision(precision) == "auto":
        raise ConfigError("precision 'auto' depends on the device: resolve_precision(precision, device) first")
    return _DTYPES[precision]


def autocast_context(device: str | torch.device, precision: str = "fp32") -> ContextManager:
    """A context running matmuls/convs in bf16/fp16 while weights stay fp32; a no-op for fp32 ("auto": see above).

    Together with the fp32 norms this is safer than the original's whole-module `.half()`.
    """
    dtype = precision_dtype(resolve_precision(precision, resolve_device(device)))
    if dtype == torch.float32:
        return contextlib.nullcontext()
    dev = resolve_device(device)
    return torch.autocast(device_type=dev.type, dtype=dtype)


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (as the original's GroupNorm32), cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def maybe_compile(module: nn.Module, mode: str | None) -> nn.Module:
    """``torch.compile(module, mode=mode)`` (None: the module unchanged).

    Compilation happens lazily on the first call, per input shape; the engines' crops have fixed shapes, so
    the step loop reuses one graph ("reduce-overhead" replays it as a CUDA graph).
    """
    if mode is None:
        return module
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; valid: None or one of {list(COMPILE_MODES)}")
    return torch.compile(module, mode=mode)
