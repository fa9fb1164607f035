"""UNet3D against the original UNetModel: tiny goldens, skip_context, released-size key layout, shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ld_augment.errors import ConfigError
from ld_augment.nets import LINET_RELEASED, LINET_TINY, LMNET_RELEASED, LMNET_TINY, UNet3D, UNetConfig

TINY = {"lmnet_unet": LMNET_TINY, "linet_unet": LINET_TINY}


def _tiny_model(tiny: dict) -> UNet3D:
    cfg = UNetConfig.from_original_kwargs(tiny["config"]["constructor_kwargs"])
    model = UNet3D(cfg).eval()
    result = model.load_state_dict(tiny["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_reference_reproduced(load_tiny, name: str) -> None:
    tiny = load_tiny(name)
    model = _tiny_model(tiny)
    assert dataclasses.replace(model.cfg, use_checkpoint=False) == TINY[name]
    assert list(model.state_dict()) == list(tiny["state_dict"])  # same order as the original
    assert sum(p.numel() for p in model.parameters()) == tiny["config"]["param_count"]
    inputs, outputs = tiny["inputs"], tiny["outputs"]
    assert set(outputs) == {"out"}
    with torch.no_grad():
        out = model(inputs["x"], inputs["timesteps"], inputs["context"])
    assert out.shape == outputs["out"].shape == inputs["x"].shape[:1] + outputs["out"].shape[1:]
    assert (out - outputs["out"]).abs().max().item() <= 1e-5


def test_skip_context_ignores_the_context(load_tiny) -> None:
    tiny = load_tiny("linet_unet")
    model = _tiny_model(tiny)
    x, t, ctx = (tiny["inputs"][k][:1] for k in ("x", "timesteps", "context"))
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), model(x, t, None))
        assert torch.equal(model(x, t, ctx), model(x, t, torch.randn_like(ctx)))
        # with skip_context off the same weights attend to the context, so the output changes
        crossing = UNet3D(dataclasses.replace(model.cfg, skip_context=False)).eval()
        crossing.load_state_dict(tiny["state_dict"], strict=True)
        assert (crossing(x, t, ctx) - model(x, t, ctx)).abs().max() > 1e-3


def test_lmnet_context_matters(load_tiny) -> None:
    tiny = load_tiny("lmnet_unet")
    model = _tiny_model(tiny)
    x, t, ctx = tiny["inputs"]["x"], tiny["inputs"]["timesteps"], tiny["inputs"]["context"]
    with torch.no_grad():
        assert (model(x, t, ctx) - model(x, t, ctx.flip(1) * 0.5)).abs().max() > 1e-3
        with pytest.raises(ValueError, match="64-d"):
            model(x, t, None)  # attention width 32 != context_dim 64: self-attention in attn2 is impossible


@pytest.mark.parametrize(("layout", "cfg"), [
    ("lmnet_unet_test", LMNET_RELEASED), ("lmnet_unet_train", LMNET_RELEASED),
    ("linet_unet_test", LINET_RELEASED), ("linet_unet_train", LINET_RELEASED),
])
def test_released_key_layout_is_identical(load_layout, layout: str, cfg: UNetConfig) -> None:
    spec = load_layout(layout)
    with torch.device("meta"):
        model = UNet3D(cfg)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == spec["entries"]
    assert sum(p.numel() for p in model.parameters()) == spec["param_count"]


@pytest.mark.parametrize(("cfg", "spatial"), [
    (LMNET_TINY, (4, 4, 8)),
    # deeper net: its 2x2x3 bottom level keeps GroupNorm well conditioned (1x1x2 amplifies rounding to 3e-5)
    (dataclasses.replace(LMNET_TINY, channel_mult=(1, 4, 4), num_res_blocks=2), (8, 8, 12)),
])
def test_shapes_and_batch_independence(cfg: UNetConfig, spatial: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = UNet3D(cfg).eval()
    x = torch.randn(2, cfg.in_channels, *spatial)
    ctx = torch.randn(2, 3, cfg.context_dim)
    with torch.no_grad():
        out = model(x, torch.tensor([5, 500]), ctx)
        single = model(x[1:], torch.tensor(500), ctx[1:])  # a 0-d timestep is broadcast over the batch
    assert out.shape == (2, cfg.out_channels, *spatial)
    assert torch.allclose(out[1:], single, atol=1e-5)


def test_bad_inputs_and_configs_are_readable() -> None:
    model = UNet3D(LMNET_TINY).eval()
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 4, 3, 4, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[B, 4"):
        model(torch.zeros(1, 3, 4, 4, 4), torch.tensor([1]))
    with pytest.raises(ConfigError, match="context_dim"):
        UNet3D(dataclasses.replace(LMNET_TINY, skip_context=True))  # width 32 != context_dim 64
    with pytest.raises(ConfigError, match="num_head_channels"):
        UNet3D(dataclasses.replace(LMNET_TINY, num_head_channels=12))
    with pytest.raises(ConfigError, match="multiple of 32"):
        UNet3D(dataclasses.replace(LMNET_TINY, channel_mult=(1, 2)))


def test_reduced_precision_paths_run(load_tiny) -> None:
    tiny = load_tiny("lmnet_unet")
    model = _tiny_model(tiny)
    x, t, ctx = tiny["inputs"]["x"], tiny["inputs"]["timesteps"], tiny["inputs"]["context"]
    ref = tiny["outputs"]["out"]
    with torch.no_grad():
        half = model.to(torch.bfloat16)(x, t, ctx)  # the original's whole-module cast, in bf16 on CPU
    assert half.dtype == torch.float32 and half.shape == ref.shape
    assert (half - ref).abs().max() < 0.1 * ref.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = UNet3D(LMNET_TINY).train()
    ckpt = UNet3D(dataclasses.replace(LMNET_TINY, use_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, ctx = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 2, 64)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, torch.tensor([3]), ctx).square().mean().backward()
        grads.append(model.input_blocks[0][0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
