"""Training noising and losses against their formulas (ARCHITECTURE.md section 5)."""

from __future__ import annotations

import pytest
import torch

from ld_augment.diffusion import DDPMSchedule, linet_loss, lmnet_loss, masked_q_sample, q_sample, soft_dice_loss


@pytest.fixture(scope="module")
def ddpm() -> DDPMSchedule:
    return DDPMSchedule.create()


def test_q_sample_formula_per_sample_timestep(ddpm: DDPMSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 5, 6, generator=g), torch.randn(3, 2, 4, 5, 6, generator=g)
    t = torch.tensor([0, 500, 999])
    out = q_sample(x0, t, noise, ddpm)
    for i, ti in enumerate(t.tolist()):
        a = ddpm.alphas_cumprod[ti].double()
        expected = a.sqrt() * x0[i].double() + (1 - a).sqrt() * noise[i].double()
        torch.testing.assert_close(out[i].double(), expected, rtol=1e-5, atol=1e-6)


def test_masked_q_sample_keeps_clean_latent_outside_mask(ddpm: DDPMSchedule) -> None:
    g = torch.Generator().manual_seed(1)
    z0, noise = torch.randn(2, 4, 6, 6, 6, generator=g), torch.randn(2, 4, 6, 6, 6, generator=g)
    mask = (torch.rand(2, 1, 6, 6, 6, generator=g) > 0.5).float()
    t = torch.tensor([10, 900])
    out = masked_q_sample(z0, t, noise, mask, ddpm)
    outside = (mask == 0).expand_as(z0)
    assert torch.equal(out[outside], z0[outside])
    torch.testing.assert_close(out[~outside], q_sample(z0, t, noise, ddpm)[~outside])


def test_lmnet_loss_weights_bbox_voxels_by_fg_weight() -> None:
    eps = torch.zeros(1, 1, 4, 4, 4)
    bbox = torch.zeros(1, 1, 4, 4, 4)
    bbox[..., 1, 1, 1] = 1
    pred_in, pred_out = eps.clone(), eps.clone()
    pred_in[..., 1, 1, 1] = 2.0
    pred_out[..., 3, 3, 3] = 2.0
    assert lmnet_loss(eps, eps, bbox).item() == 0.0
    assert lmnet_loss(pred_in, eps, bbox).item() == pytest.approx(1000 * 4 / 64)
    assert lmnet_loss(pred_out, eps, bbox).item() == pytest.approx(4 / 64)
    assert lmnet_loss(pred_in, eps, bbox, fg_weight=1.0).item() == pytest.approx(4 / 64)


def test_linet_loss_l1_is_normalised_by_mask_volume_and_dice() -> None:
    channels, shape = 4, (2, 1, 4, 4, 4)
    mask = torch.zeros(shape)
    mask[0, :, :2] = 1  # 32 voxels
    mask[1, :, :1] = 1  # 16 voxels
    eps = torch.zeros(2, channels, 4, 4, 4)
    logit = torch.where(mask > 0, 30.0, -30.0)  # sigmoid ~ mask: dice ~ 0
    out = torch.cat([eps + 1.0, logit], dim=1)  # error 1 everywhere, counted only inside the mask
    loss = linet_loss(out, eps, mask)
    assert loss.l1.item() == pytest.approx(channels, rel=1e-6)  # C * k / k for both samples
    assert loss.dice.item() == pytest.approx(0.0, abs=1e-6)
    assert loss.total.item() == pytest.approx(loss.l1.item() + loss.dice.item())
    bad = linet_loss(torch.cat([eps, -logit], dim=1), eps, mask)
    assert bad.l1.item() == 0.0 and bad.dice.item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="5 channels"):
        linet_loss(eps, eps, mask)


def test_soft_dice_pools_over_batch() -> None:
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert soft_dice_loss(p, y).item() == pytest.approx(1 - 2 / 3, rel=1e-5)
