"""End-to-end goldens: our nets + our samplers reproduce the ORIGINAL LMNet / LINet DDIM samplers.

The goldens in reference/sampling were produced by the original MaskSampler / InpaintingSampler with the tiny
random-weight networks of reference/tiny (10 DDIM steps, eta 0, released 1000-step schedule). Tolerance (reference
README): max abs diff <= 1e-5 * max(1, max|reference|); integer outputs exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ld_augment.diffusion import DDIMSchedule, DDPMSchedule, sample_ddim, sample_masked_ddim

nets = pytest.importorskip("ld_augment.nets")


def _load(folder: Path, name: str) -> dict:
    return torch.load(folder / name, weights_only=True)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = 1e-5 * max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol:.3g}"


def _unet(tiny_dir: Path) -> torch.nn.Module:
    cfg = nets.UNetConfig.from_original_kwargs(json.loads((tiny_dir / "config.json").read_text())["constructor_kwargs"])
    model = nets.UNet3D(cfg).eval()
    model.load_state_dict(_load(tiny_dir, "state_dict.pt"), strict=True)
    return model


def _model_fn(unet: torch.nn.Module):
    def fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return unet(x, t, context=context)

    return fn


@pytest.fixture(scope="module")
def schedule_10() -> DDIMSchedule:
    return DDIMSchedule.from_ddpm(DDPMSchedule.create(), num_steps=10, eta=0.0)


@torch.no_grad()
def test_lmnet_mask_ddim_matches_original(reference_data: Path, schedule_10: DDIMSchedule) -> None:
    golden = reference_data / "sampling" / "lmnet_ddim10_eta0"
    inputs, expected = _load(golden, "inputs.pt"), _load(golden, "outputs.pt")
    unet = _unet(reference_data / "tiny" / "lmnet_unet")
    out = sample_ddim(_model_fn(unet), inputs["x_T"], schedule_10, context=inputs["context"],
                      concat=inputs["cond_channels"], record_intermediates=True)
    assert out.timesteps == expected["timesteps_visited"].tolist()
    _assert_close(out.sample, expected["x0"], "x0")
    _assert_close(torch.stack(out.intermediates), expected["x_inter"], "x_inter")
    # The original logs x_T as pred_x0[0]; ours lists only the step predictions.
    _assert_close(torch.stack(out.pred_x0), expected["pred_x0"][1:], "pred_x0")


@torch.no_grad()
def test_linet_inpainting_ddim_with_vq_matches_original(reference_data: Path, schedule_10: DDIMSchedule) -> None:
    golden = reference_data / "sampling" / "linet_inpaint_ddim10_eta0"
    inputs, expected = _load(golden, "inputs.pt"), _load(golden, "outputs.pt")
    unet = _unet(reference_data / "tiny" / "linet_unet")
    vq_dir = reference_data / "tiny" / "vq"
    vq_cfg = nets.VQConfig.from_original_kwargs(json.loads((vq_dir / "config.json").read_text())["constructor_kwargs"])
    vq = nets.VQModel3D(vq_cfg).eval()
    vq.load_state_dict(_load(vq_dir, "state_dict.pt"), strict=True)

    z0 = vq.encode(inputs["image"])
    _assert_close(z0, inputs["z0_known_latent"], "VQ pre-quant latent z0")
    mask = inputs["mask"]
    out = sample_masked_ddim(_model_fn(unet), inputs["x_T"], inputs["z0_known_latent"], mask, schedule_10,
                             context=inputs["context"], record_intermediates=True)
    _assert_close(out.sample, expected["samples_5ch"], "samples_5ch")
    assert torch.equal(out.sample[:, 4:], mask), "the mask channel must come back unchanged"
    known = (mask == 0).expand_as(inputs["z0_known_latent"])
    assert torch.equal(out.sample[:, :4][known], inputs["z0_known_latent"][known]), "known latents changed"
    _assert_close(torch.stack(out.intermediates), expected["x_inter"], "x_inter")
    _assert_close(torch.stack(out.pred_x0), expected["pred_x0"][1:], "pred_x0")
    _assert_close(vq.decode(out.sample[:, :4]), expected["decoded"], "decoded image")
