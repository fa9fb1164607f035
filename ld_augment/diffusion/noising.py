"""Training-time forward noising and the LMNet / LINet losses, as pure functions of tensors.

Kept separate from the training loops so the losses can be tested against their formulas (ARCHITECTURE.md 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ld_augment.diffusion.schedules import DDPMSchedule


def _extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to [B, 1, 1, ...] so it broadcasts over a batch shaped like ``like``."""
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: DDPMSchedule) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (Ho et al. 2020, eq. 4); t: int64 [B]."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    return _extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x0
    ) * noise


def masked_q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, schedule: DDPMSchedule
) -> torch.Tensor:
    """LINet's training input: noised inside ``mask`` (1 = lesion region), the clean latent outside."""
    return mask * q_sample(x0, t, noise, schedule) + (1 - mask) * x0


def lmnet_loss(
    eps_pred: torch.Tensor, eps: torch.Tensor, bbox: torch.Tensor, *, fg_weight: float = 1000.0
) -> torch.Tensor:
    """LMNet eps loss: squared error weighted ``fg_weight`` inside the bounding box (bbox == 1), 1 elsewhere.

    Mean over voxels per sample, then over the batch. The heavy weight keeps the small lesion from being drowned
    by the (trivially predictable) background of the 64x152x152 crop.
    """
    weight = torch.where(bbox == 1, torch.as_tensor(fg_weight, dtype=eps.dtype), torch.ones((), dtype=eps.dtype))
    per_voxel = weight.to(eps.device) * (eps_pred - eps) ** 2
    return per_voxel.flatten(1).mean(dim=1).mean()


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1e-6) -> torch.Tensor:
    """1 - (2 sum(p y) + s) / (sum p + sum y + s), pooled over the whole batch (as the original)."""
    inter = (prob * target).sum()
    return 1 - (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)


@dataclass(frozen=True)
class LINetLoss:
    total: torch.Tensor
    l1: torch.Tensor
    dice: torch.Tensor


def linet_loss(
    model_output: torch.Tensor,
    eps: torch.Tensor,
    mask: torch.Tensor,
    *,
    normaliser_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    smooth: float = 1e-6,
) -> LINetLoss:
    """LINet loss: masked L1 on eps normalised by the mask volume, plus soft Dice on the mask logit.

    ``model_output`` is [B, C+1, ...]: C eps channels and one mask logit. L1 = sum |eps_pred*m - eps*m| over
    all non-batch dims / (sum(normaliser_mask) + 1e-6), averaged over the batch; normalising by the mask
    volume (not the crop volume) makes small and large lesions weigh alike. ``normaliser_mask`` defaults to
    ``mask`` (the original divides by its coarse mask, which equals the fine one when use_coarse_label=0);
    ``target_mask`` (default ``mask``) is the fine lesion mask the Dice term compares sigmoid(logit) to.
    """
    channels = eps.shape[1]
    if model_output.shape[1] != channels + 1:
        raise ValueError(f"LINet output needs {channels + 1} channels (eps + mask logit), got {model_output.shape[1]}")
    norm = mask if normaliser_mask is None else normaliser_mask
    target = mask if target_mask is None else target_mask
    eps_pred = model_output[:, :channels]
    abs_err = (eps_pred * mask - eps * mask).abs().flatten(1).sum(dim=1)
    l1 = (abs_err / (norm.flatten(1).sum(dim=1) + smooth)).mean()
    dice = soft_dice_loss(torch.sigmoid(model_output[:, channels:]), target, smooth)
    return LINetLoss(total=l1 + dice, l1=l1, dice=dice)
