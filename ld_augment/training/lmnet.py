"""Train or fine-tune LMNet, the lesion-mask diffusion UNet (ARCHITECTURE.md sections 3 and 5).

One step: x0 = lesion mask crop, t ~ U{0..T-1}, x_t = q_sample(x0, t, eps); the UNet sees
cat([x_t, organ map / 104, organ mask, box]) and the report's LMNet attribute texts, predicts eps, and the
squared error is weighted `fg_weight` (1000) inside the box.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from ld_augment.diffusion import DDPMSchedule, lmnet_loss, q_sample
from ld_augment.engines.diffusion.common import uses_text
from ld_augment.nets import UNet3D, UNetConfig
from ld_augment.text import AttributeEncoder
from ld_augment.training.crops import DEFAULT_CROPS, CropDataset, check_crop
from ld_augment.training.data import TrainingCase, find_cases
from ld_augment.training import distributed as D
from ld_augment.training.loop import StepCallback, StepInfo, draw_noise, draw_timesteps, fit
from ld_augment.training.samples import lmnet_sample_fn
from ld_augment.training.setup import (
    RECIPE, RunOptions, TrainResult, finish_run, encoder_record, make_encoder, prepare_run, recipe_options,
    recipe_spacing, run_record, training_layout,
)


def lmnet_batch_loss(model: torch.nn.Module, x0: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None,
                     gen: torch.Generator | Sequence[torch.Generator], schedule: DDPMSchedule, *,
                     fg_weight: float = 1000.0) -> torch.Tensor:
    """The LMNet loss of one batch; t and eps are drawn on the CPU from `gen` (one generator, or one per sample
    so the draws do not depend on how the batch is split over processes)."""
    t = draw_timesteps(gen, x0.shape[0], schedule.num_timesteps).to(x0.device)
    noise = draw_noise(gen, x0.shape).to(x0.device)
    return lmnet_step_loss(model, x0, cond, context, t, noise, schedule, fg_weight=fg_weight)


def lmnet_step_loss(model: torch.nn.Module, x0: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None,
                    t: torch.Tensor, noise: torch.Tensor, schedule: DDPMSchedule, *,
                    fg_weight: float = 1000.0) -> torch.Tensor:
    """The LMNet loss for given timesteps and noise (the original's p_losses): eps MSE, x1000 inside the box."""
    x_t = q_sample(x0, t, noise, schedule)
    eps = model(torch.cat([x_t, cond], dim=1), t, context)
    return lmnet_loss(eps.float(), noise, cond[:, 2:3], fg_weight=fg_weight)


def train_lmnet(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, config: Any = None,
    init: str | os.PathLike | None = None, encoder: str | AttributeEncoder = "vocab",
    encoder_options: Mapping[str, Any] | None = None, steps: int = 1000, batch_size: int = 1,
    lr: float | None = None, ema_decay: float | None = 0.9999, device: str = "cpu", precision: str = "fp32",
    seed: int = 0, save_every: int = 500, resume: bool = True, crop_size: Sequence[int] = DEFAULT_CROPS["lmnet"],
    spacing: Sequence[float] | None | str = RECIPE, fg_weight: float = 1000.0, num_workers: int = 0,
    progress: bool = True, allow_pickle: bool = False, callback: StepCallback | None = None,
    run: RunOptions | None = None, cases: Sequence[TrainingCase] | None = None, recipe: str | None = None,
) -> TrainResult:
    """Train LMNet on the cases of `data_dir` (layout: `ld_augment.training.data`); write `out_dir/lmnet.pt`.

    config: "tiny", "released", a `nets.PRESETS` key, a JSON file or a UNetConfig (default: the init's config,
    else "released"). init: our checkpoint or the authors' Lightning LMNet.ckpt to fine-tune (the encoder must
    then be the one it was trained with; released = "biomedclip"). The EMA weights are what is saved for
    inference; `out_dir/lmnet_train_state.pt` lets an interrupted run resume exactly (resume=True).
    run: DDP-era options (grad accumulation, warm-up, clipping, TensorBoard, samples, data sampling); under
    torchrun every rank calls this function and rank 0 alone writes. cases: already validated cases (e.g. from
    `data.read_list_files`) instead of the folders of `data_dir`.
    recipe: "released" (the original's training: `training.recipe`), "ours", or None = released for a released
    `init`, else ours. lr None: the recipe's (released: 2e-5 x processes x batch x accumulation); spacing
    "recipe": the recipe's grid (released: native spacing).
    """
    run = run or RunOptions()
    ctx = D.init(device)
    cases = list(cases) if cases is not None else find_cases(data_dir, need=("label", "seg", "report"))
    prep = prepare_run("lmnet", config, init, seed, allow_pickle, recipe)
    model, cfg, start = prep.model, prep.cfg, prep.start
    opts = recipe_options(prep, run, lr=lr, batch_size=batch_size, ctx=ctx, steps=steps, ema_decay=ema_decay,
                          device=device, precision=precision, seed=seed, save_every=save_every, resume=resume,
                          num_workers=num_workers, progress=progress)
    spacing = recipe_spacing(prep.recipe, spacing)
    assert isinstance(cfg, UNetConfig) and isinstance(model, UNet3D)
    crop = check_crop(crop_size, model.spatial_divisor, "LMNet")
    dev = ctx.device
    enc = make_encoder(encoder, encoder_options, cfg, start).to(dev)
    layout = training_layout(start)
    dataset = CropDataset(cases, "lmnet", crop, seed=seed, spacing=spacing, layout=layout,
                          sampling=run.sampling, iter_num=run.iter_num, items=prep.recipe.items)
    model.to(dev)
    schedule = DDPMSchedule.create()
    uses_context = uses_text(cfg)

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any], info: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            context = enc.encode_attributes(batch["texts"]).to(dev) if uses_context else None
        loss = lmnet_batch_loss(net, batch["x0"].to(dev, non_blocking=True), batch["cond"].to(dev, non_blocking=True),
                                context, info.generators(), schedule, fg_weight=fg_weight)
        return loss, {}

    meta = {"network": "lmnet", "config": cfg.to_dict(), "encoder": encoder_record(enc), "crop": list(crop),
            "spacing": None if spacing is None else list(spacing), "fg_weight": fg_weight,
            "cases": [c.case_id for c in cases], "init": None if init is None else str(init),
            "recipe": prep.recipe.record()}
    sample_fn = lmnet_sample_fn(dataset, enc if uses_context else None, schedule, dev) if opts.sample_every else None
    fitted = fit("lmnet", model, loss_fn, dataset, opts, out_dir, meta, ctx=ctx, callback=callback,
                 sample_fn=sample_fn, ema_start=prep.ema_start)
    training = {k: meta[k] for k in ("crop", "spacing", "fg_weight", "cases", "init", "recipe")}
    training.update(run_record(opts, fitted), init_origin=None if start is None else start.origin)
    extra = {"kind": "lmnet", "layout": layout, "text_encoder": encoder_record(enc), "training": training}
    return finish_run("lmnet", out_dir, fitted, cfg, encoder_id=enc.encoder_id, extra=extra, steps=steps)
