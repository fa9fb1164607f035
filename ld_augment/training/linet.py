"""Train or fine-tune LINet, the latent inpainting UNet, on top of a frozen VQ (ARCHITECTURE.md 3 and 5).

One step: the normalised CT crop is encoded by the frozen VQ to the continuous latent z0 (what LINet diffuses
on); the lesion mask is nearest-downsampled to the latent grid; inside the mask z0 is noised to x_t, outside it
stays clean; the UNet sees cat([x_t, mask]) and predicts 4 eps channels plus a mask logit; the loss is the
mask-normalised L1 on eps plus a soft Dice on the logit (`diffusion.linet_loss`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ld_augment.diffusion import DDPMSchedule, LINetLoss, linet_loss, masked_q_sample
from ld_augment.engines.diffusion.common import uses_text
from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.nets import UNet3D, UNetConfig, VQModel3D, save_checkpoint
from ld_augment.text import AttributeEncoder
from ld_augment.training.crops import DEFAULT_CROPS, CropDataset, check_crop
from ld_augment.training.data import find_cases
from ld_augment.training.loop import StepCallback, TrainOptions, TrainPaths, fit
from ld_augment.training.setup import (
    TrainResult, encoder_record, last_loss, load_init, make_encoder, resolve_config, start_network,
    training_layout,
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


def linet_batch_loss(model: torch.nn.Module, vq: VQModel3D, image: torch.Tensor, lesion: torch.Tensor,
                     context: torch.Tensor | None, gen: torch.Generator, schedule: DDPMSchedule) -> LINetLoss:
    """The LINet loss of one batch: frozen VQ encode, latent mask, masked noising, L1 + Dice."""
    with torch.no_grad():
        z0 = vq.encode(image).float()
        mask = (F.interpolate(lesion, size=z0.shape[2:], mode="nearest") > 0.5).float()
    t = torch.randint(0, schedule.num_timesteps, (z0.shape[0],), generator=gen).to(z0.device)
    noise = torch.randn(z0.shape, generator=gen).to(z0.device)
    x_t = masked_q_sample(z0, t, noise, mask, schedule)
    out = model(torch.cat([x_t, mask], dim=1), t, context)
    return linet_loss(out.float(), noise, mask)


def train_linet(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, vq: str | os.PathLike | None = None,
    vq_config: Any = None, config: Any = None, init: str | os.PathLike | None = None,
    encoder: str | AttributeEncoder = "vocab",
    encoder_options: Mapping[str, Any] | None = None, steps: int = 1000, batch_size: int = 1, lr: float = 1e-4,
    ema_decay: float | None = 0.9999, device: str = "cpu", precision: str = "fp32", seed: int = 0,
    save_every: int = 500, resume: bool = True, crop_size: Sequence[int] = DEFAULT_CROPS["linet"],
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0), num_workers: int = 0, progress: bool = True,
    allow_pickle: bool = False, callback: StepCallback | None = None,
) -> TrainResult:
    """Train LINet on the cases of `data_dir` (CT needed); write `out_dir/linet.pt`.

    vq: the frozen autoencoder (our checkpoint, or the released VQ.ckpt / LINet.ckpt; default: the VQ inside a
    released LINet `init`); vq_config describes a released VQ file of another size. config "released" is the
    training config (cross-attention on the text); the released inference config ignores the text
    (skip_context). Other options as `train_lmnet`.
    """
    opts = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, device=device,
                        precision=precision, seed=seed, save_every=save_every, resume=resume,
                        num_workers=num_workers, progress=progress)
    cases = find_cases(data_dir, need=("label", "seg", "report", "ct"))
    model, cfg, start = start_network("linet", config, init, seed, allow_pickle)
    assert isinstance(cfg, UNetConfig) and isinstance(model, UNet3D)
    enc = make_encoder(encoder, encoder_options, cfg, start).to(opts.device)  # checked before the (big) VQ loads
    vq_model, vq_source = load_frozen_vq(vq, init, config=vq_config, allow_pickle=allow_pickle)
    latent_ch = vq_model.cfg.embed_dim
    if cfg.in_channels != latent_ch + 1:
        raise ConfigError(f"LINet config takes {cfg.in_channels} channels but the VQ latent has {latent_ch} (+1 mask "
                          f"channel = {latent_ch + 1})")
    factor = vq_model.cfg.downsampling_factor
    crop = check_crop(crop_size, factor * model.spatial_divisor, "LINet image")
    layout = training_layout(start)
    dataset = CropDataset(cases, "linet", crop, seed=seed, spacing=spacing, layout=layout)
    model.to(opts.device)
    vq_model.to(opts.device)
    schedule = DDPMSchedule.create()
    uses_context = uses_text(cfg)

    def loss_fn(batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            context = enc.encode_attributes(batch["texts"]).to(opts.device) if uses_context else None
        parts = linet_batch_loss(model, vq_model, batch["image"].to(opts.device, non_blocking=True),
                                 batch["lesion"].to(opts.device, non_blocking=True), context, gen, schedule)
        return parts.total, {"l1": float(parts.l1.detach()), "dice": float(parts.dice.detach())}

    meta = {"network": "linet", "config": cfg.to_dict(), "encoder": encoder_record(enc), "crop": list(crop),
            "spacing": None if spacing is None else list(spacing), "vq": Path(vq_source).name,
            "vq_config": vq_model.cfg.to_dict(), "cases": [c.case_id for c in cases],
            "init": None if init is None else str(init)}
    final = fit("linet", model, loss_fn, dataset, opts, out_dir, meta, callback=callback)
    paths = TrainPaths.for_run(out_dir, "linet")
    training = {k: meta[k] for k in ("crop", "spacing", "cases", "init")}
    training.update(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                    init_origin=None if start is None else start.origin)
    extra = {"kind": "linet", "layout": layout, "text_encoder": encoder_record(enc),
             "vq": {"source": str(vq_source), "config": vq_model.cfg.to_dict()}, "training": training}
    save_checkpoint(paths.final, final.cpu(), cfg, encoder_id=enc.encoder_id, extra=extra)
    return TrainResult(paths.final, paths.state, paths.log, steps, enc.encoder_id, last_loss(paths.log))
