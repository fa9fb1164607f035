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


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    from ld_augment.nets import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("fp16", "cuda") == "fp16"  # an explicit choice is kept
    assert isinstance(autocast_context("cpu", "auto"), contextlib.nullcontext)
    with pytest.raises(ConfigError, match="resolve_precision"):
        precision_dtype("auto")


def test_norms_compute_in_fp32_under_low_precision() -> None:
    from torch import nn
    from torch.nn import functional as F

    from ld_augment.nets.precision import FP32GroupNorm, FP32LayerNorm

    torch.manual_seed(0)
    x = (torch.randn(2, 8, 3, 3, 3) * 50 + 100).bfloat16()
    gn = FP32GroupNorm(4, 8)
    assert gn.state_dict().keys() == nn.GroupNorm(4, 8).state_dict().keys()  # checkpoints load unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gn(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.group_norm(x.float(), 4, eps=1e-5).bfloat16())
    ln = FP32LayerNorm(8)
    tokens = x.flatten(2).transpose(1, 2)
    assert torch.equal(ln(tokens), F.layer_norm(tokens.float(), (8,)).bfloat16())


def test_every_norm_of_the_networks_computes_in_fp32() -> None:
    from ld_augment.nets import LINET_TINY, VQ_TINY, VQModel3D
    from ld_augment.nets.precision import FP32GroupNorm, FP32LayerNorm

    for model in (UNet3D(LMNET_TINY), UNet3D(LINET_TINY), VQModel3D(VQ_TINY)):
        norms = [m for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
        assert norms and all(isinstance(m, (FP32GroupNorm, FP32LayerNorm)) for m in norms)


def test_materialized_attention_matches_sdpa() -> None:
    from ld_augment.nets import set_attention_backend

    torch.manual_seed(0)
    model = UNet3D(LMNET_TINY).eval()
    for p in model.parameters():  # zero-initialised output layers would hide the attention's contribution
        torch.nn.init.normal_(p, std=0.2)
    x, ctx = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 3, 64)
    with torch.no_grad():
        fused = model(x, torch.tensor([9, 500]), ctx)
        set_attention_backend(model, "materialized")
        assert all(m.backend == "materialized" for m in model.modules() if hasattr(m, "backend"))
        reference = model(x, torch.tensor([9, 500]), ctx)
        set_attention_backend(model, "sdpa")
        again = model(x, torch.tensor([9, 500]), ctx)
    torch.testing.assert_close(reference, fused, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, fused)
    with pytest.raises(ConfigError, match="valid"):
        set_attention_backend(model, "flash3")


def test_compile_option() -> None:
    from ld_augment.nets import maybe_compile

    model = UNet3D(LMNET_TINY)
    assert maybe_compile(model, None) is model
    with pytest.raises(ConfigError, match="reduce-overhead"):
        maybe_compile(model, "fastest")


@pytest.mark.slow
def test_compiled_unet_gives_the_eager_result() -> None:
    from ld_augment.nets import maybe_compile

    torch.manual_seed(0)
    model = UNet3D(LMNET_TINY).eval()
    x, ctx = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 64)
    with torch.no_grad():
        eager = model(x, torch.tensor([9]), ctx)
        compiled = maybe_compile(model, "default")(x, torch.tensor([9]), ctx)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
