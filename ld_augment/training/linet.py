"""Train or fine-tune LINet, the latent inpainting UNet, on top of a frozen VQ (ARCHITECTURE.md 3 and 5).

One step: the normalised CT crop is encoded by the frozen VQ to the continuous latent z0 (what LINet diffuses
on); the lesion mask is nearest-downsampled to the latent grid; inside the mask z0 is noised to x_t, outside it
stays clean; the UNet sees cat([x_t, mask]) and predicts 4 eps channels plus a mask logit; the loss is the
mask-normalised L1 on eps plus a soft Dice on the logit (`diffusion.linet_loss`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ld_augment.diffusion import DDPMSchedule, LINetLoss, linet_loss, masked_q_sample
from ld_augment.engines.diffusion.common import uses_text
from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.nets import UNet3D, UNetConfig, VQModel3D
from ld_augment.text import AttributeEncoder
from ld_augment.training.crops import DEFAULT_CROPS, CropDataset, check_crop
from ld_augment.training import distributed as D
from ld_augment.training.data import TrainingCase, find_cases
from ld_augment.training.released_items import enclosing_box
from ld_augment.training.loop import StepCallback, StepInfo, draw_noise, draw_timesteps, fit
from ld_augment.training.samples import linet_sample_fn
from ld_augment.training.setup import (
    RECIPE, RunOptions, TrainResult, finish_run, encoder_record, load_init, make_encoder, prepare_run,
    recipe_options, recipe_spacing, resolve_config, run_record, training_layout,
)


def load_frozen_vq(vq: str | os.PathLike | None, init: str | os.PathLike | None, *, config: Any = None,
                   allow_pickle: bool = False) -> tuple[VQModel3D, str]:
    """The VQ from `vq` (our checkpoint, VQ.ckpt or LINet.ckpt), else from a released LINet `init`.

    `config` describes a released file's VQ (default: the released preset); our checkpoints carry their own.
    """
    source = vq if vq is not None else init
    if source is None:
        raise ConfigError("LINet trains on the latent of a frozen VQ: pass vq=<our VQ checkpoint (ld-augment train "
                          "vq) or the released VQ.ckpt / LINet.ckpt> (--vq)")
    try:
        start = load_init("vq", source, resolve_config("vq", config), allow_pickle=allow_pickle)
    except (CheckpointError, ConfigError) as exc:
        if vq is None:  # the VQ was only guessed from init
            raise ConfigError(f"no VQ given and none found in init {init} ({exc}); pass vq=... (--vq)") from None
        raise
    module = start.module
    assert isinstance(module, VQModel3D)
    return module.eval().requires_grad_(False), str(source)


def latent_masks(lesion: torch.Tensor, latent_shape: Sequence[int], box: torch.Tensor | str | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fine lesion mask, coarse normaliser mask) on the latent grid, nearest-downsampled as the original.

    box: an image-space box mask (our recipe: the boxes of the crop's lesions), "enclosing" (the released
    recipe: ONE box enclosing every latent lesion voxel of the sample) or None (the lesion mask itself).
    """
    mask = (F.interpolate(lesion, size=tuple(latent_shape), mode="nearest") > 0.5).float()
    if isinstance(box, str):
        if box != "enclosing":
            raise ConfigError(f"unknown LINet normaliser box {box!r}; valid: 'enclosing' or a mask")
        return mask, enclosing_box(mask)
    coarse = None if box is None else (F.interpolate(box, size=tuple(latent_shape), mode="nearest") > 0.5).float()
    return mask, coarse


def linet_batch_loss(model: torch.nn.Module, vq: VQModel3D, image: torch.Tensor, lesion: torch.Tensor,
                     context: torch.Tensor | None, gen: torch.Generator | Sequence[torch.Generator],
                     schedule: DDPMSchedule, *, box: torch.Tensor | str | None = None,
                     pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LINetLoss:
    """The LINet loss of one batch: frozen VQ encode, latent mask, masked noising, L1 + Dice.

    box: the coarse mask whose volume divides the masked L1 (ARCHITECTURE.md 5; see `latent_masks`). pool:
    sums a tensor over the processes, so the Dice pooled "over the whole batch" is over the global batch
    under DDP.
    """
    with torch.no_grad():
        z0 = vq.encode(image).float()
    t = draw_timesteps(gen, z0.shape[0], schedule.num_timesteps).to(z0.device)
    noise = draw_noise(gen, z0.shape).to(z0.device)
    return linet_step_loss(model, z0, lesion, context, t, noise, schedule, box=box, pool=pool)


def linet_step_loss(model: torch.nn.Module, z0: torch.Tensor, lesion: torch.Tensor, context: torch.Tensor | None,
                    t: torch.Tensor, noise: torch.Tensor, schedule: DDPMSchedule, *,
                    box: torch.Tensor | str | None = None,
                    pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LINetLoss:
    """The LINet loss for a given latent, timesteps and noise (the original's p_losses)."""
    with torch.no_grad():
        mask, coarse = latent_masks(lesion, z0.shape[2:], box)
    x_t = masked_q_sample(z0, t, noise, mask, schedule)
    out = model(torch.cat([x_t, mask], dim=1), t, context).float()
    parts = linet_loss(out, noise, mask, normaliser_mask=coarse)
    if pool is None:
        return parts
    prob, smooth = torch.sigmoid(out[:, z0.shape[1]:]), 1e-6
    inter, total = pool((prob * mask).sum()), pool(prob.sum() + mask.sum())
    dice = 1 - (2 * inter + smooth) / (total + smooth)
    return LINetLoss(total=parts.l1 + dice, l1=parts.l1, dice=dice)


def train_linet(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, vq: str | os.PathLike | None = None,
    vq_config: Any = None, config: Any = None, init: str | os.PathLike | None = None,
    encoder: str | AttributeEncoder = "vocab",
    encoder_options: Mapping[str, Any] | None = None, steps: int = 1000, batch_size: int = 1,
    lr: float | None = None, ema_decay: float | None = 0.9999, device: str = "cpu", precision: str = "fp32",
    seed: int = 0, save_every: int = 500, resume: bool = True, crop_size: Sequence[int] = DEFAULT_CROPS["linet"],
    spacing: Sequence[float] | None | str = RECIPE, num_workers: int = 0, progress: bool = True,
    allow_pickle: bool = False, callback: StepCallback | None = None, run: RunOptions | None = None,
    cases: Sequence[TrainingCase] | None = None, recipe: str | None = None,
) -> TrainResult:
    """Train LINet on the cases of `data_dir` (CT needed); write `out_dir/linet.pt`.

    vq: the frozen autoencoder (our checkpoint, or the released VQ.ckpt / LINet.ckpt; default: the VQ inside a
    released LINet `init`); vq_config describes a released VQ file of another size. config "released" is the
    training config (cross-attention on the text); the released inference config ignores the text
    (skip_context). Other options as `train_lmnet` (released recipe: base LR 2e-6, the L1 normalised by one
    box enclosing every latent lesion voxel).
    """
    run = run or RunOptions()
    ctx = D.init(device)
    dev = ctx.device
    cases = list(cases) if cases is not None else find_cases(data_dir, need=("label", "seg", "report", "ct"))
    prep = prepare_run("linet", config, init, seed, allow_pickle, recipe)
    model, cfg, start = prep.model, prep.cfg, prep.start
    opts = recipe_options(prep, run, lr=lr, batch_size=batch_size, ctx=ctx, steps=steps, ema_decay=ema_decay,
                          device=device, precision=precision, seed=seed, save_every=save_every, resume=resume,
                          num_workers=num_workers, progress=progress)
    spacing = recipe_spacing(prep.recipe, spacing)
    assert isinstance(cfg, UNetConfig) and isinstance(model, UNet3D)
    enc = make_encoder(encoder, encoder_options, cfg, start).to(dev)  # checked before the (big) VQ loads
    vq_model, vq_source = load_frozen_vq(vq, init, config=vq_config, allow_pickle=allow_pickle)
    latent_ch = vq_model.cfg.embed_dim
    if cfg.in_channels != latent_ch + 1:
        raise ConfigError(f"LINet config takes {cfg.in_channels} channels but the VQ latent has {latent_ch} (+1 mask "
                          f"channel = {latent_ch + 1})")
    factor = vq_model.cfg.downsampling_factor
    crop = check_crop(crop_size, factor * model.spatial_divisor, "LINet image")
    layout = training_layout(start)
    dataset = CropDataset(cases, "linet", crop, seed=seed, spacing=spacing, layout=layout,
                          sampling=run.sampling, iter_num=run.iter_num, items=prep.recipe.items)
    enclosing = prep.recipe.linet_normaliser == "enclosing"
    model.to(dev)
    vq_model.to(dev)
    schedule = DDPMSchedule.create()
    uses_context = uses_text(cfg)
    pool = (lambda t: D.global_sum(ctx, t)) if ctx.distributed else None

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any], info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            context = enc.encode_attributes(batch["texts"]).to(dev) if uses_context else None
        parts = linet_batch_loss(net, vq_model, batch["image"].to(dev, non_blocking=True),
                                 batch["lesion"].to(dev, non_blocking=True), context, info.generators(), schedule,
                                 box="enclosing" if enclosing else batch["box"].to(dev, non_blocking=True),
                                 pool=pool)
        return parts.total, {"l1": float(parts.l1.detach()), "dice": float(parts.dice.detach())}

    meta = {"network": "linet", "config": cfg.to_dict(), "encoder": encoder_record(enc), "crop": list(crop),
            "spacing": None if spacing is None else list(spacing), "vq": Path(vq_source).name,
            "vq_config": vq_model.cfg.to_dict(), "cases": [c.case_id for c in cases],
            "init": None if init is None else str(init), "recipe": prep.recipe.record()}
    sample_fn = (linet_sample_fn(dataset, vq_model, enc if uses_context else None, dev)
                 if opts.sample_every else None)
    fitted = fit("linet", model, loss_fn, dataset, opts, out_dir, meta, ctx=ctx, callback=callback,
                 sample_fn=sample_fn, ema_start=prep.ema_start)
    training = {k: meta[k] for k in ("crop", "spacing", "cases", "init", "recipe")}
    training.update(run_record(opts, fitted), init_origin=None if start is None else start.origin)
    extra = {"kind": "linet", "layout": layout, "text_encoder": encoder_record(enc),
             "vq": {"source": str(vq_source), "config": vq_model.cfg.to_dict()}, "training": training}
    return finish_run("linet", out_dir, fitted, cfg, encoder_id=enc.encoder_id, extra=extra, steps=steps)
