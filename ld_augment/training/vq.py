"""Train or fine-tune the VQ autoencoder whose latent LINet diffuses on.

Implemented: the reconstruction L1 over the crop plus the codebook loss (weight 1), with the straight-through
estimator of `nets.quantizer`. NOT implemented (documented gap): the original's LPIPS(VGG16) term on one axial
slice and the adaptive hinge GAN loss of its 2-D and 3-D PatchGAN discriminators (ARCHITECTURE.md 2), which
start only after 50,001 steps in the released config. Without them reconstructions come out blurrier than the
released VQ's; fine-tuning the released VQ briefly on L1 + codebook is the safer use.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ld_augment.nets import VQConfig, VQModel3D, save_checkpoint
from ld_augment.training.crops import DEFAULT_CROPS, CropDataset, check_crop
from ld_augment.training.data import find_cases
from ld_augment.training.loop import StepCallback, TrainOptions, TrainPaths, fit
from ld_augment.training.setup import TrainResult, last_loss, start_network, training_layout


def train_vq(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, config: Any = None,
    init: str | os.PathLike | None = None, steps: int = 1000, batch_size: int = 1, lr: float = 1e-4,
    ema_decay: float | None = None, device: str = "cpu", precision: str = "fp32", seed: int = 0,
    save_every: int = 500, resume: bool = True, crop_size: Sequence[int] = DEFAULT_CROPS["vq"],
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0), codebook_weight: float = 1.0, num_workers: int = 0,
    progress: bool = True, allow_pickle: bool = False, callback: StepCallback | None = None,
) -> TrainResult:
    """Train the VQ on CT crops of `data_dir` (only ct.nii.gz is needed per case); write `out_dir/vq.pt`.

    init: our VQ checkpoint, the released VQ.ckpt, or a released LINet.ckpt (its first stage). No EMA by
    default (the original VQ kept none); crops are centred on random body voxels.
    """
    opts = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, device=device,
                        precision=precision, seed=seed, save_every=save_every, resume=resume,
                        num_workers=num_workers, progress=progress)
    cases = find_cases(data_dir, need=("ct",))
    model, cfg, start = start_network("vq", config, init, seed, allow_pickle)
    assert isinstance(cfg, VQConfig) and isinstance(model, VQModel3D)
    crop = check_crop(crop_size, cfg.downsampling_factor, "VQ")
    layout = training_layout(start)
    dataset = CropDataset(cases, "vq", crop, seed=seed, spacing=spacing, layout=layout)
    model.to(opts.device)

    def loss_fn(batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"].to(opts.device, non_blocking=True)
        recon, codebook = model(image)
        l1 = (recon.float() - image).abs().mean()
        return l1 + codebook_weight * codebook.float(), {"l1": float(l1.detach()), "codebook": float(codebook.detach())}

    meta = {"network": "vq", "config": cfg.to_dict(), "crop": list(crop), "codebook_weight": codebook_weight,
            "spacing": None if spacing is None else list(spacing), "cases": [c.case_id for c in cases],
            "init": None if init is None else str(init)}
    final = fit("vq", model, loss_fn, dataset, opts, out_dir, meta, callback=callback)
    paths = TrainPaths.for_run(out_dir, "vq")
    training = {k: meta[k] for k in ("crop", "spacing", "cases", "init", "codebook_weight")}
    training.update(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                    init_origin=None if start is None else start.origin)
    extra = {"kind": "vq", "layout": layout, "losses": ["l1", "codebook"],
             "not_implemented": ["lpips", "gan"], "training": training}
    save_checkpoint(paths.final, final.cpu(), cfg, encoder_id=None, extra=extra)
    return TrainResult(paths.final, paths.state, paths.log, steps, None, last_loss(paths.log))
