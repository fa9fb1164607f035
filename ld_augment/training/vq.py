"""Train or fine-tune the VQ autoencoder whose latent LINet diffuses on: the paper's VQ-GAN objective.

Generator loss (ARCHITECTURE.md 2): L1 over the crop + perceptual_weight * LPIPS(VGG16) on one random axial
slice per sample + codebook loss (weight 1) + disc_weight * adaptive weight * GAN term, where the GAN term is
the mean of the 2-D slice PatchGAN's and the 3-D PatchGAN's -mean(logits) and the adaptive weight is
||grad nll|| / (||grad gan|| + 1e-4) at the decoder's last layer (clamped to [0, 1e4]; nll = L1 + LPIPS).
Discriminator loss: the mean of both discriminators' hinge losses, with their own optimizer. Both GAN terms are
off before `disc_start` (the original: 50,001). disc_start_unit "optimizer_steps" counts as the original's
pinned pytorch-lightning 1.7.7 did: its global_step counts both optimizers' steps, so batch k (0-based) runs
the generator at 2k and the discriminators at 2k + 1 and the GAN switches on after ~25,000 batches; "batches"
counts batches. Which terms were used is recorded in the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ld_augment.errors import ConfigError
from ld_augment.nets import VQConfig, VQModel3D
from ld_augment.nets.discriminators import NORMS, VQGANDiscriminator
from ld_augment.nets.perceptual import PerceptualLoss
from ld_augment.training import distributed as D
from ld_augment.training.crops import DEFAULT_CROPS, CropDataset, check_crop
from ld_augment.training.data import TrainingCase, find_cases
from ld_augment.training.loop import Phase, StepCallback, StepInfo, fit, seeded_build
from ld_augment.training.samples import vq_sample_fn
from ld_augment.training.setup import (
    RECIPE, RunOptions, TrainResult, finish_run, prepare_run, recipe_options, recipe_spacing, run_record,
    training_layout,
)


DISC_START_UNITS = ("batches", "optimizer_steps")


def global_step(batch: int, phase: int, unit: str) -> int:
    """The 0-based step counter the GAN switch compares with disc_start, for 1-based batch `batch` and
    phase 0 (generator) / 1 (discriminators): the batch index, or the original's count of optimizer steps."""
    return 2 * (batch - 1) + phase if unit == "optimizer_steps" else batch - 1


@dataclass(frozen=True)
class VQGANOptions:
    """The VQ-GAN objective's weights and switches (defaults: the released config, where given).

    vgg16_weights: torchvision's ImageNet VGG16 file for LPIPS (needed when perceptual_weight > 0, unless
    random_backbone, which is for tests). disc_start: steps trained before the GAN terms switch on.
    """

    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0
    vgg16_weights: str | None = None
    lpips_linear_weights: str | None = None
    random_backbone: bool = False
    disc_weight: float = 0.5
    disc_start: int = 50_001
    disc_lr: float | None = None  # default: the generator's lr
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "batch"
    # None: the training recipe's (released: "optimizer_steps", "unit", True; ours: "batches", "symmetric", False)
    disc_start_unit: str | None = None   # "optimizer_steps" (the original's global_step, both optimizers) | "batches"
    lpips_input: str | None = None       # "unit": [0, 1] slices fed to LPIPS as is (the original) | "symmetric"
    lpips_dropout: bool | None = None    # True: LPIPS' dropout active while training (the original)

    def __post_init__(self) -> None:
        for name in ("codebook_weight", "perceptual_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0:
            raise ConfigError(f"disc_start must be >= 0, got {self.disc_start}")
        if self.disc_norm not in NORMS:
            raise ConfigError(f"disc_norm must be one of {list(NORMS)}, got {self.disc_norm!r}")
        if self.disc_start_unit is not None and self.disc_start_unit not in DISC_START_UNITS:
            raise ConfigError(f"disc_start_unit must be one of {list(DISC_START_UNITS)}, got {self.disc_start_unit!r}")

    @property
    def uses_gan(self) -> bool:
        return self.disc_weight > 0

    def terms(self) -> list[str]:
        return ["l1", "codebook"] + (["lpips"] if self.perceptual_weight > 0 else []) + (
            ["gan_2d", "gan_3d"] if self.uses_gan else [])

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["vgg16_weights"] = None if self.vgg16_weights is None else os.path.basename(self.vgg16_weights)
        out["lpips_linear_weights"] = (None if self.lpips_linear_weights is None
                                       else os.path.basename(self.lpips_linear_weights))
        return out


def axial_axis(orientation: str) -> int:
    """The array axis of the patient's S-I direction in a crop of this orientation code ("RAS", "LPS", "SAL").

    The original takes its LPIPS slices along its first array axis, which is S in its [S, A, L] arrays: axial.
    """
    code = orientation.upper()
    for letter in "SI":
        if letter in code:
            return code.index(letter)
    raise ConfigError(f"orientation {orientation!r} names no superior/inferior axis")


def take_slices(volume: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """[B, C, D1, D2, D3] -> [B, C, H, W]: one slice per sample along spatial `axis` (0..2) at index[b]."""
    moved = volume.movedim(2 + axis, 2)  # [B, C, N, H, W]
    return torch.stack([moved[b, :, int(index[b])] for b in range(volume.shape[0])])


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


class VQGANObjective:
    """The generator loss (main phase) and the discriminator loss (second phase) of one training step."""

    def __init__(self, model: VQModel3D, gan: VQGANOptions, ctx: D.DistContext, axis: int,
                 perceptual: PerceptualLoss | None, disc: VQGANDiscriminator | None) -> None:
        self.model, self.gan, self.ctx, self.axis = model, gan, ctx, axis
        self.perceptual, self.disc = perceptual, disc
        self._stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def gan_on(self, step: int, phase: int = 0) -> bool:
        """The original's adopt_weight: 0 while the global step (`global_step`) is below disc_start."""
        unit = self.gan.disc_start_unit or "batches"
        return self.disc is not None and global_step(step, phase, unit) >= self.gan.disc_start

    def _slice_index(self, info: StepInfo, n: int) -> torch.Tensor:
        return torch.cat([torch.randint(0, n, (1,), generator=g) for g in info.generators(stream=1)])

    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        last = self.model.decoder.conv_out.weight
        g_nll = D.average_tensor(self.ctx, torch.autograd.grad(nll, last, retain_graph=True)[0])
        g_gan = D.average_tensor(self.ctx, torch.autograd.grad(g_loss, last, retain_graph=True)[0])
        weight = torch.norm(g_nll) / (torch.norm(g_gan) + 1e-4)
        return torch.clamp(weight, 0.0, 1e4).detach()

    def generator_loss(self, net: torch.nn.Module, batch: dict[str, Any], info: StepInfo
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"].to(self.ctx.device, non_blocking=True)
        index = self._slice_index(info, image.shape[2 + self.axis])
        if self.perceptual is not None and self.perceptual.training:  # LPIPS dropout: seeded per step, resumable
            seed = int(torch.randint(0, 2**62, (1,), generator=info.generators(stream=2)[0]))
            devices = [image.device.index or 0] if image.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                loss, logs, recon = self.generator_terms(net, image, index, self.gan_on(info.step, 0))
        else:
            loss, logs, recon = self.generator_terms(net, image, index, self.gan_on(info.step, 0))
        if self.gan_on(info.step, 1):
            self._stash[info.micro] = (recon.detach(), index)
        return loss, logs

    def generator_terms(self, net: torch.nn.Module, image: torch.Tensor, index: torch.Tensor, gan_active: bool
                        ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(generator loss, logs, reconstruction) for given slice indices; the GAN term only when `gan_active`."""
        recon, codebook = net(image)
        recon = recon.float()
        l1 = (recon - image).abs().mean()
        logs = {"l1": float(l1.detach()), "codebook": float(codebook.detach())}
        nll = l1
        if self.perceptual is not None and self.gan.perceptual_weight > 0:
            p = self.perceptual(take_slices(image, index, self.axis), take_slices(recon, index, self.axis)).mean()
            nll = nll + self.gan.perceptual_weight * p
            logs["lpips"] = float(p.detach())
        loss = nll + self.gan.codebook_weight * codebook.float()
        if gan_active:
            assert self.disc is not None
            logits_2d, logits_3d = self.disc(take_slices(recon, index, self.axis), recon)  # bare module: no DDP
            g_loss = -0.5 * (logits_2d.float().mean() + logits_3d.float().mean())
            weight = self._adaptive_weight(nll, g_loss)
            loss = loss + self.gan.disc_weight * weight * g_loss
            logs.update(g_loss=float(g_loss.detach()), adaptive_weight=float(weight))
        return loss, logs, recon

    def discriminator_loss(self, dnet: torch.nn.Module, batch: dict[str, Any], info: StepInfo
                           ) -> tuple[torch.Tensor, dict[str, float]] | None:
        if not self.gan_on(info.step, 1):
            return None
        image = batch["image"].to(self.ctx.device, non_blocking=True)
        fake, index = self._stash.pop(info.micro)
        return self.discriminator_terms(dnet, image, fake, index)

    def discriminator_terms(self, dnet: torch.nn.Module, image: torch.Tensor, fake: torch.Tensor,
                            index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The hinge loss of both discriminators on real `image` and reconstruction `fake` (same slices)."""
        real_2d, real_3d = dnet(take_slices(image, index, self.axis), image)
        fake_2d, fake_3d = dnet(take_slices(fake, index, self.axis), fake)
        d2, d3 = hinge_d_loss(real_2d.float(), fake_2d.float()), hinge_d_loss(real_3d.float(), fake_3d.float())
        return 0.5 * (d2 + d3), {"d_loss_2d": float(d2.detach()), "d_loss_3d": float(d3.detach())}


def train_vq(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, config: Any = None,
    init: str | os.PathLike | None = None, steps: int = 1000, batch_size: int = 1, lr: float | None = None,
    ema_decay: float | None = None, device: str = "cpu", precision: str = "fp32", seed: int = 0,
    save_every: int = 500, resume: bool = True, crop_size: Sequence[int] = DEFAULT_CROPS["vq"],
    spacing: Sequence[float] | None | str = RECIPE, codebook_weight: float | None = None, num_workers: int = 0,
    progress: bool = True, allow_pickle: bool = False, callback: StepCallback | None = None,
    gan: VQGANOptions | None = None, run: RunOptions | None = None, cases: Sequence[TrainingCase] | None = None,
    recipe: str | None = None,
) -> TrainResult:
    """Train the VQ on CT crops of `data_dir` (only ct.nii.gz is needed per case); write `out_dir/vq.pt`.

    init: our VQ checkpoint, the released VQ.ckpt, or a released LINet.ckpt (its first stage). No EMA by
    default (the original VQ kept none); crops are centred on random body voxels. gan: the objective's terms
    (default: the paper's, which needs VGG16 weights for LPIPS; VQGANOptions(perceptual_weight=0,
    disc_weight=0) is plain L1 + codebook).
    """
    run = run or RunOptions()
    ctx = D.init(device)
    dev = ctx.device
    prep = prepare_run("vq", config, init, seed, allow_pickle, recipe)
    model, cfg, start = prep.model, prep.cfg, prep.start
    opts = recipe_options(prep, run, lr=lr, batch_size=batch_size, ctx=ctx, steps=steps, ema_decay=ema_decay,
                          device=device, precision=precision, seed=seed, save_every=save_every, resume=resume,
                          num_workers=num_workers, progress=progress)
    spacing = recipe_spacing(prep.recipe, spacing)
    gan = gan or VQGANOptions()
    recipe_gan = {"disc_start_unit": prep.recipe.disc_start_unit, "lpips_input": prep.recipe.lpips_input,
                  "lpips_dropout": prep.recipe.lpips_dropout}
    gan = VQGANOptions(**{**asdict(gan), **{k: v for k, v in recipe_gan.items() if getattr(gan, k) is None}})
    if codebook_weight is not None:
        gan = VQGANOptions(**{**asdict(gan), "codebook_weight": codebook_weight})
    perceptual = None
    if gan.perceptual_weight > 0:  # seeded: a random (test) backbone is the same in every run and on every rank
        perceptual = seeded_build(lambda: PerceptualLoss(gan.vgg16_weights, linear_weights=gan.lpips_linear_weights,
                                                         random_backbone=gan.random_backbone,
                                                         input_range=gan.lpips_input or "symmetric",
                                                         dropout=bool(gan.lpips_dropout)),
                                  seed + 2).train()
    need = ("label", "ct") if prep.recipe.items == "released" else ("ct",)
    cases = list(cases) if cases is not None else find_cases(data_dir, need=need)
    assert isinstance(cfg, VQConfig) and isinstance(model, VQModel3D)
    crop = check_crop(crop_size, cfg.downsampling_factor, "VQ")
    smallest = 3 * 2**gan.disc_layers  # each PatchGAN layer halves; the two 4x4 stride-1 convs need >= 3 voxels
    if gan.uses_gan and min(crop) < smallest:
        raise ConfigError(f"VQ crop {list(crop)} is too small for {gan.disc_layers}-layer PatchGAN discriminators "
                          f"(every side >= {smallest}); use a larger crop or fewer layers (--disc-layers)")
    layout = training_layout(start)
    dataset = CropDataset(cases, "vq", crop, seed=seed, spacing=spacing, layout=layout,
                          sampling=run.sampling, iter_num=run.iter_num, items=prep.recipe.items)
    model.to(dev)
    disc = None
    if gan.uses_gan:
        disc = seeded_build(lambda: VQGANDiscriminator(cfg.in_channels, gan.disc_channels, gan.disc_layers,
                                                       gan.disc_norm), seed + 1)
        if ctx.distributed and dev.type == "cuda" and gan.disc_norm == "batch":
            disc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(disc)
        disc.to(dev)
    if perceptual is not None:
        perceptual.to(dev)
    objective = VQGANObjective(model, gan, ctx, axial_axis(layout), perceptual, disc)
    phases = [] if disc is None else [Phase("discriminator", disc, objective.discriminator_loss,
                                            lr=gan.disc_lr or opts.lr, betas=prep.recipe.disc_betas,
                                            weight_decay=prep.recipe.disc_weight_decay,
                                            optimizer=prep.recipe.disc_optimizer)]
    meta = {"network": "vq", "config": cfg.to_dict(), "crop": list(crop), "objective": gan.record(),
            "spacing": None if spacing is None else list(spacing), "cases": [c.case_id for c in cases],
            "init": None if init is None else str(init), "recipe": prep.recipe.record()}
    sample_fn = vq_sample_fn(dataset, dev) if opts.sample_every else None
    fitted = fit("vq", model, objective.generator_loss, dataset, opts, out_dir, meta, ctx=ctx, phases=phases,
                 callback=callback, sample_fn=sample_fn)
    training = {k: meta[k] for k in ("crop", "spacing", "cases", "init", "objective", "recipe")}
    training.update(run_record(opts, fitted), init_origin=None if start is None else start.origin)
    extra = {"kind": "vq", "layout": layout, "losses": gan.terms(), "training": training}
    if perceptual is not None:
        extra["lpips_backbone"] = perceptual.backbone
    return finish_run("vq", out_dir, fitted, cfg, encoder_id=None, extra=extra, steps=steps)
