"""LINet as a texture engine: the healthy crop is VQ-encoded, the lesion inpainted in latent space, decoded.

Per lesion, as the original inference (ARCHITECTURE.md 3, 6): a crop (released 128^3) around the lesion,
normalised HU -> [0, 1], VQ-encoded to the latent z0 (factor 2); the lesion mask nearest-downsampled to the
latent and thresholded at 0.5; masked DDIM that keeps the clean z0 outside the mask (released: 200 steps,
eta 1.0); VQ decode, inverse normalisation, and the original's shift of the crop's mean onto the healthy crop's
mean (it cancels the VQ round trip's brightness bias). Two deliberate differences: the original encodes and
decodes the whole CT once and pastes the whole crop back with a 2-voxel Gaussian blend at the crop border; here
each crop is encoded on its own, and only a neighbourhood of the lesion is written back (the lesion dilated by
``dilate_voxels``, then a smooth ramp over ``blend_voxels``), because the pipeline's contract is that the CT
changes only near the lesion -- the VQ round trip alters every voxel of the crop slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.base import LesionContext, TextureEngine
from ld_augment.engines.diffusion.common import (
    RELEASED_ETA, RELEASED_STEPS, check_crop_divisible, check_sampling, encode_context,
)
from ld_augment.engines.diffusion.crops import CropWindow, check_crop, fit_crop, to_network_axes
from ld_augment.engines.diffusion.intensity import HU_KNOTS, denormalize_ct, normalize_ct
from ld_augment.engines.diffusion.loading import (
    PathArg, check_encoder_available, encoder_id, load_unet, load_vq, network_orientation_of,
    text_encoder_for,
)
from ld_augment.engines.diffusion.sampling import inpaint_linet, to_tensor, torch_generator
from ld_augment.engines.procedural.fields import mask_slices
from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.nets import maybe_compile, resolve_device, resolve_precision
from ld_augment.reports.conditioning import conditioning_texts
from ld_augment.text import AttributeEncoder


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """The lesion at latent resolution: nearest downsampling (every ``factor``-th voxel), as the original.

    A lesion thinner than ``factor`` voxels can fall between the samples; then any-pooling keeps it, so a
    drawn lesion always gets generated content.
    """
    lat = mask[::factor, ::factor, ::factor]
    if not lat.any():
        shape = [n // factor for n in mask.shape]
        lat = mask.reshape(shape[0], factor, shape[1], factor, shape[2], factor).any(axis=(1, 3, 5))
    return lat


def blend_weight(mask: np.ndarray, keep: np.ndarray, dilate_voxels: float, blend_voxels: float) -> np.ndarray:
    """1 on the lesion and within ``dilate_voxels`` of it, then a smoothstep to 0 over ``blend_voxels``.

    ``keep`` voxels (earlier lesions) outside the mask get 0, so they are never overwritten.
    """
    distance = ndimage.distance_transform_edt(~mask)
    t = np.clip(1.0 - (distance - dilate_voxels) / max(blend_voxels, 1e-6), 0.0, 1.0)
    weight = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    weight[keep & ~mask] = 0.0
    return weight


class DiffusionTextureEngine(TextureEngine):
    """LINet + VQ-GAN texture engine; defaults are the released inference settings (200 steps, eta 1.0, 128^3).

    Weights: ``checkpoint`` (ld-augment format) or ``lightning_checkpoint`` (the released LINet.ckpt, EMA
    weights) for the UNet; the VQ-GAN from ``vq_checkpoint`` (ld-augment format), ``vq_lightning_checkpoint``
    (VQ.ckpt) or, when neither is given, the first stage stored inside the LINet Lightning file; ``config`` /
    ``vq_config`` describe the networks in those files (default: the released sizes) and, without any file,
    give random weights (tests, benchmarks). ``skip_context``: None keeps the loaded config's
    choice -- for the released LINet that is True, the released test config's behaviour (the UNet ignores the
    text, so no text encoder or BiomedCLIP weights are needed); False uses the cross-attention as trained.
    ``network_orientation`` as for the mask engine (LPS for the released files: crops are mirrored in and out).
    Speed options: ``sampler`` "ddim" (the original) or a few-step solver ("dpmsolver++", "unipc", ...; then
    ``steps`` is the number of network calls, e.g. 20); ``precision`` "auto" = bf16 autocast on CUDA, fp32 on
    CPU; ``compile`` a torch.compile mode ("reduce-overhead" adds CUDA graphs), None for eager.
    """

    name = "diffusion"

    def __init__(
        self,
        *,
        checkpoint: PathArg = None,
        lightning_checkpoint: PathArg = None,
        vq_checkpoint: PathArg = None,
        vq_lightning_checkpoint: PathArg = None,
        encoder: str | AttributeEncoder = "biomedclip",
        encoder_weights: PathArg = None,
        skip_context: bool | None = None,
        steps: int = RELEASED_STEPS,
        eta: float = RELEASED_ETA,
        crop: Sequence[int] = (128, 128, 128),
        device: str = "cpu",
        precision: str = "auto",
        sampler: str = "ddim",
        compile: str | None = None,
        config: Any = None,
        vq_config: Any = None,
        dilate_voxels: float = 2.0,
        blend_voxels: float = 2.0,
        mean_shift: bool = True,
        hu_range: tuple[float, float] = (-1024.0, 3071.0),
        use_ema: bool = True,
        allow_pickle: bool = False,
        init_seed: int = 0,
        network_orientation: str | None = None,
    ) -> None:
        self.steps, self.eta, self.precision = check_sampling(steps, eta, precision, sampler)
        self.sampler, self.compile = sampler, compile
        self.crop = check_crop(crop, "crop")
        if dilate_voxels < 0 or blend_voxels < 0:
            raise ConfigError(f"dilate_voxels and blend_voxels must be >= 0, got {dilate_voxels}, {blend_voxels}")
        if hu_range[0] >= hu_range[1]:
            raise ConfigError(f"hu_range must be (low, high) with low < high, got {hu_range}")
        self.dilate_voxels, self.blend_voxels = float(dilate_voxels), float(blend_voxels)
        self.mean_shift, self.hu_range = bool(mean_shift), (float(hu_range[0]), float(hu_range[1]))
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.precision, self.device)  # "auto": bf16 on CUDA, fp32 on CPU
        if skip_context is False and lightning_checkpoint is not None:
            check_encoder_available(encoder, encoder_weights)  # before reading the 750 MB file
        self.net = load_unet("linet", checkpoint=checkpoint, lightning_checkpoint=lightning_checkpoint,
                             config=config, expected_encoder=encoder_id(encoder), device=self.device,
                             skip_context=skip_context, use_ema=use_ema, allow_pickle=allow_pickle,
                             init_seed=init_seed)
        self.unet = maybe_compile(self.net.module, compile)
        vq_from_linet = lightning_checkpoint if vq_checkpoint is None else None  # the LINet file holds the VQ
        vq = load_vq(checkpoint=vq_checkpoint, lightning_checkpoint=vq_lightning_checkpoint or vq_from_linet,
                     config=vq_config, device=self.device, allow_pickle=allow_pickle, init_seed=init_seed + 1)
        if vq is None:
            raise CheckpointError("the diffusion texture engine needs the VQ-GAN: pass vq_checkpoint=<ld-augment .pt>, "
                                  "vq_lightning_checkpoint=<VQ.ckpt> or lightning_checkpoint=<LINet.ckpt> (holds it)")
        self.vq = vq
        if self.vq.cfg.embed_dim + 1 != self.net.cfg.in_channels:
            raise ConfigError(f"the VQ latent has {self.vq.cfg.embed_dim} channels but LINet takes "
                              f"{self.net.cfg.in_channels} = latent + 1 mask channel")
        self.orientation = network_orientation_of(network_orientation, self.net.record)
        self.factor = self.vq.cfg.downsampling_factor
        self.divisor = self.factor * self.net.module.spatial_divisor
        check_crop_divisible(self.crop, self.divisor, "crop")
        self.encoder, self.encoder_record = text_encoder_for(self.net, encoder, weights=encoder_weights,
                                                             device=self.device)

    def provenance(self) -> dict:
        return {
            "engine": self.name, "network": "linet", "steps": self.steps, "eta": self.eta,
            "encoder_id": self.encoder_record.get("id"),
            "options": {"crop": list(self.crop), "device": str(self.device), "precision": self.precision,
                        "sampler": self.sampler, "compile": self.compile,
                        "skip_context": bool(self.net.cfg.skip_context), "dilate_voxels": self.dilate_voxels,
                        "blend_voxels": self.blend_voxels, "mean_shift": self.mean_shift,
                        "hu_range": list(self.hu_range), "network_orientation": self.orientation},
            "checkpoints": {"linet": self.net.record, "vq": self.vq.record}, "encoder": self.encoder_record,
        }

    def render(self, ctx: LesionContext, lesion_mask: np.ndarray, report: Any, rng: np.random.Generator) -> np.ndarray:
        lesion = np.asarray(lesion_mask, dtype=bool)
        shape = ctx.ct.shape
        if lesion.shape != shape or not lesion.any():
            raise ConfigError(f"lesion mask must be a non-empty bool array of shape {shape}")
        reach = int(np.ceil(self.dilate_voxels + self.blend_voxels))
        box = mask_slices(lesion, (0, 0, 0))
        extent = [sl.stop - sl.start + 2 * reach for sl in box]
        centre = [(sl.start + sl.stop - 1) / 2.0 for sl in box]
        window = CropWindow.around(centre, fit_crop(self.crop, extent, self.divisor), shape)

        ct_crop = window.extract(np.asarray(ctx.ct, dtype=np.float32), HU_KNOTS[0])
        valid = window.valid(shape)
        mask_crop = window.extract(lesion, False)
        axes = self.orientation
        image = to_tensor([to_network_axes(normalize_ct(ct_crop), axes)], self.device)
        mask_lat = to_tensor([latent_mask(to_network_axes(mask_crop, axes), self.factor)], self.device)
        context = encode_context(self.encoder, conditioning_texts(report, purpose="linet"), self.device)
        generated = inpaint_linet(self.unet, self.vq.module, image, mask_lat, context, steps=self.steps,
                                  eta=self.eta, generator=torch_generator(rng, self.device),
                                  precision=self.precision, sampler=self.sampler)
        hu = to_network_axes(denormalize_ct(generated[0, 0].cpu().numpy()), axes)
        if self.mean_shift:
            hu += float(ct_crop[valid].mean() - hu[valid].mean())

        weight = blend_weight(mask_crop, window.extract(ctx.occupied, False), self.dilate_voxels, self.blend_voxels)
        weight[~valid] = 0.0
        low = min(self.hu_range[0], float(ctx.ct.min()))
        high = max(self.hu_range[1], float(ctx.ct.max()))
        blended = np.clip(ct_crop + weight * (hu - ct_crop), low, high)
        out = np.array(ctx.ct, dtype=np.float32, copy=True)
        vol, inner = window.overlap(shape)
        region = out[vol]
        touched = weight[inner] > 0  # voxels with weight 0 keep their exact value (no float round trip)
        region[touched] = blended[inner][touched]
        return out
