"""Device and autocast helpers."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ld_augment.errors import ConfigError
from ld_augment.nets import LMNET_TINY, UNet3D, autocast_context, precision_dtype, resolve_device


def test_fp32_is_a_no_op_context() -> None:
    assert isinstance(autocast_context("cpu", "fp32"), contextlib.nullcontext)
    assert precision_dtype("bf16") is torch.bfloat16


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu() -> None:
    torch.manual_seed(0)
    model = UNet3D(LMNET_TINY).eval()
    x, ctx = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 2, 64)
    with torch.no_grad():
        ref = model(x, torch.tensor([9]), ctx)
        with autocast_context("cpu", "bf16"):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
            low = model(x, torch.tensor([9]), ctx)
    assert low.dtype == torch.float32  # returned in the input's dtype
    assert not torch.equal(low, ref)
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_precision_and_device_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="valid"):
        autocast_context("cpu", "fp8")
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("gpu0")
    assert resolve_device(None) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
