"""LINet as a texture engine: the healthy crop is VQ-encoded, the lesion inpainted in latent space, decoded.

Per lesion, as the original inference (ARCHITECTURE.md 3, 6): the volume is looked at in the network's array
layout (``SAL`` = [S, A, L] for the released files); a crop (released 128^3) around the lesion, normalised
HU -> [0, 1], VQ-encoded to the latent z0 (factor 2); the lesion mask nearest-downsampled to the latent and
thresholded at 0.5; masked DDIM that keeps the clean z0 outside the mask (released: 200 steps, eta 1.0); VQ
decode and inverse normalisation.

What the released configuration then does: it writes the whole VQ reconstruction back (the mean-shift and
border-blend code of the original inference is never reached with the released config). Here, deliberately,
only a neighbourhood of the lesion is written back -- the lesion dilated by ``dilate_voxels``, then a smooth
ramp to the healthy CT over ``blend_voxels`` -- because the pipeline's contract is that the CT changes only
near the lesion, and the VQ round trip alters every voxel of the crop slightly. The rim defaults (4 + 4
voxels) are wide enough that the transition LINet draws around the lesion survives: the decoded change
extends a few voxels past the mask (latent factor 2, the decoder's receptive field), and a 2 + 2 rim cut
into it (``benchmarks/bench_linet_rim.py`` measures the change's profile across the boundary). ``mean_shift``
corrects the VQ round trip's brightness bias, measured where nothing should change: body voxels (denser than
``body_threshold_hu``) of the crop outside the written neighbourhood, with the healthy CT taken in the
network's own window [-1000, 1000] HU, so padding or air outside the scanner's field of view (-3024 HU,
which the VQ cannot represent) does not drag the lesion darker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ld_augment.engines.base import LesionContext, OnRendered, TextureEngine, check_one_each
from ld_augment.engines.diffusion.batching import DEFAULT_MAX_BATCH, check_max_batch, sample_in_batches
from ld_augment.engines.diffusion.common import (
    RELEASED_ETA, RELEASED_STEPS, check_crop_divisible, check_sampling, encode_context,
)
from ld_augment.engines.diffusion.crops import WINDOWS, CropWindow, check_crop, fit_crop
from ld_augment.engines.diffusion.intensity import HU_KNOTS, denormalize_ct, normalize_ct
from ld_augment.engines.diffusion.loading import (
    PathArg, check_encoder_available, encoder_id, is_released, load_unet, load_vq, network_layout_of,
    text_encoder_for,
)
from ld_augment.engines.diffusion.sampling import inpaint_linet, to_tensor, torch_generator
from ld_augment.engines.procedural.fields import mask_slices
from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.io.network_layout import NetworkLayout
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


@dataclass(frozen=True)
class _TextureJob:
    """One lesion's crop, network inputs and generator (network order), prepared before sampling."""

    window: CropWindow
    ct_crop: np.ndarray
    mask_crop: np.ndarray
    occupied_crop: np.ndarray
    image: torch.Tensor
    mask_lat: torch.Tensor
    context: torch.Tensor | None
    generator: torch.Generator


def _overlap(a: CropWindow, b: CropWindow) -> bool:
    return all(x < y + m and y < x + n for x, n, y, m in zip(a.start, a.size, b.start, b.size))


class DiffusionTextureEngine(TextureEngine):
    """LINet + VQ-GAN texture engine; defaults are the released inference settings (200 steps, eta 1.0, 128^3).

    Weights: ``checkpoint`` (ld-augment format) or ``lightning_checkpoint`` (the released LINet.ckpt, EMA
    weights) for the UNet; the VQ-GAN from ``vq_checkpoint`` (ld-augment format), ``vq_lightning_checkpoint``
    (VQ.ckpt) or, when neither is given, the first stage stored inside the LINet Lightning file; ``config`` /
    ``vq_config`` describe the networks in those files (default: the released sizes) and, without any file,
    give random weights (tests, benchmarks). ``skip_context``: None keeps the loaded config's
    choice -- for the released LINet that is True, the released test config's behaviour (the UNet ignores the
    text, so no text encoder or BiomedCLIP weights are needed); False uses the cross-attention as trained.
    ``network_layout`` as for the mask engine (SAL for the released files; ``crop`` is in its order). The
    write-back rim (``dilate_voxels``, ``blend_voxels``) and ``mean_shift`` are described in the module doc.
    ``window``: "fixed" keeps the trained crop around a lesion however large (the original; default for the
    released files), "grow" enlarges it to hold the lesion and its rim (ours; ``crops.WINDOWS``).
    Speed options: ``sampler`` "ddim" (the original) or a few-step solver ("dpmsolver++", "unipc", ...; then
    ``steps`` is the number of network calls, e.g. 20); ``precision`` "auto" = bf16 autocast on CUDA (the
    released files: the precision the original ran them in, LMNet fp32 / LINet fp16; bf16 by asking), fp32 on
    CPU; ``compile`` a torch.compile mode ("reduce-overhead" adds CUDA graphs), None for eager; ``max_batch``
    lesions share one network call in ``render_many``.
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
        max_batch: int = DEFAULT_MAX_BATCH,
        config: Any = None,
        vq_config: Any = None,
        dilate_voxels: float = 4.0,
        blend_voxels: float = 4.0,
        mean_shift: bool = True,
        body_threshold_hu: float = -500.0,
        hu_range: tuple[float, float] = (-1024.0, 3071.0),
        use_ema: bool = True,
        allow_pickle: bool = False,
        init_seed: int = 0,
        network_layout: str | NetworkLayout | None = None,
        window: str | None = None,
    ) -> None:
        self.steps, self.eta, self.precision = check_sampling(steps, eta, precision, sampler)
        self.sampler, self.compile = sampler, compile
        self.max_batch = check_max_batch(max_batch)
        self.crop = check_crop(crop, "crop")
        if dilate_voxels < 0 or blend_voxels < 0:
            raise ConfigError(f"dilate_voxels and blend_voxels must be >= 0, got {dilate_voxels}, {blend_voxels}")
        if hu_range[0] >= hu_range[1]:
            raise ConfigError(f"hu_range must be (low, high) with low < high, got {hu_range}")
        self.dilate_voxels, self.blend_voxels = float(dilate_voxels), float(blend_voxels)
        self.mean_shift, self.hu_range = bool(mean_shift), (float(hu_range[0]), float(hu_range[1]))
        self.body_threshold_hu = float(body_threshold_hu)
        self.device = resolve_device(device)
        if window is not None and window not in WINDOWS:
            raise ConfigError(f"window must be one of {list(WINDOWS)}, got {window!r}")
        if skip_context is False and lightning_checkpoint is not None:
            check_encoder_available(encoder, encoder_weights)  # before reading the 750 MB file
        self.net = load_unet("linet", checkpoint=checkpoint, lightning_checkpoint=lightning_checkpoint,
                             config=config, expected_encoder=encoder_id(encoder), device=self.device,
                             skip_context=skip_context, use_ema=use_ema, allow_pickle=allow_pickle,
                             init_seed=init_seed)
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
        self.layout = network_layout_of(network_layout, self.net.record)
        released = is_released(self.net.record)
        self.window = window or ("fixed" if released else "grow")
        # "auto": the original's fp16 for the released LINet on CUDA, else bf16 on CUDA; fp32 on CPU
        self.precision = resolve_precision(self.precision, self.device, "linet" if released else None)
        self.factor = self.vq.cfg.downsampling_factor
        self.divisor = self.factor * self.net.module.spatial_divisor
        self.unet = maybe_compile(self.net.module, compile)
        check_crop_divisible(self.crop, self.divisor, "crop")
        self.encoder, self.encoder_record = text_encoder_for(self.net, encoder, weights=encoder_weights,
                                                             device=self.device)

    def provenance(self) -> dict:
        return {
            "engine": self.name, "network": "linet", "steps": self.steps, "eta": self.eta,
            "encoder_id": self.encoder_record.get("id"),
            "options": {"crop": list(self.crop), "device": str(self.device), "precision": self.precision,
                        "sampler": self.sampler, "compile": self.compile,
                        "max_batch": self.max_batch,
                        "skip_context": bool(self.net.cfg.skip_context), "dilate_voxels": self.dilate_voxels,
                        "blend_voxels": self.blend_voxels, "mean_shift": self.mean_shift,
                        "body_threshold_hu": self.body_threshold_hu, "hu_range": list(self.hu_range),
                        "network_layout": self.layout.codes, "window": self.window},
            "checkpoints": {"linet": self.net.record, "vq": self.vq.record}, "encoder": self.encoder_record,
        }

    def render(self, ctx: LesionContext, lesion_mask: np.ndarray, report: Any, rng: np.random.Generator) -> np.ndarray:
        return self.render_many(ctx, [lesion_mask], [report], [rng])

    def render_many(self, ctx: LesionContext, lesion_masks: Sequence[np.ndarray], reports: Sequence[Any],
                    rngs: Sequence[np.random.Generator], on_rendered: OnRendered | None = None) -> np.ndarray:
        """The CT with every lesion rendered, lesion after lesion, consecutive lesions sharing network calls.

        Gives what ``render`` gives lesion after lesion (each on the previous result, with ``ctx.occupied``
        grown by the earlier masks) with the same rngs: consecutive lesions whose windows do not overlap run in
        one batch (no lesion can see another's write), a window that overlaps starts the next batch. Lesions
        are written in order, and ``on_rendered(n, ct)`` sees the CT just after lesion n's write.
        """
        check_one_each("masks", lesion_masks, reports, rngs)
        lesions = [np.asarray(m, dtype=bool) for m in lesion_masks]
        for lesion in lesions:
            if lesion.shape != ctx.ct.shape or not lesion.any():
                raise ConfigError(f"lesion mask must be a non-empty bool array of shape {ctx.ct.shape}")
        out = np.array(ctx.ct, dtype=np.float32, copy=True)
        occupied = np.array(ctx.occupied, dtype=bool, copy=True)
        wave: list[_TextureJob] = []
        written = 0
        for lesion, report, rng in zip(lesions, reports, rngs):
            window = self._window(lesion)
            if any(_overlap(window, job.window) for job in wave) or len(wave) == self.max_batch:
                self._run_wave(wave, ctx, out, on_rendered, written)
                written += len(wave)
                wave = []
            wave.append(self._prepare(window, out, lesion, occupied.copy(), report, rng))
            occupied |= lesion
        self._run_wave(wave, ctx, out, on_rendered, written)
        return out

    def _window(self, lesion: np.ndarray) -> CropWindow:
        net_lesion = self.layout.to_network(lesion)
        reach = int(np.ceil(self.dilate_voxels + self.blend_voxels))
        box = mask_slices(net_lesion, (0, 0, 0))
        lo, hi = [sl.start for sl in box], [sl.stop for sl in box]
        if self.window == "fixed":  # the original: the trained crop, a larger lesion is cut to it
            size = self.crop
        else:  # +1: floored centre
            size = fit_crop(self.crop, [b - a + 2 * reach + 1 for a, b in zip(lo, hi)], self.divisor)
        return CropWindow.for_box(lo, hi, size, net_lesion.shape)

    def _prepare(self, window: CropWindow, out: np.ndarray, lesion: np.ndarray, occupied: np.ndarray, report: Any,
                 rng: np.random.Generator) -> _TextureJob:
        """One lesion's network inputs from the CT as it is now (``out``, earlier lesions written)."""
        lay = self.layout
        net_out = lay.to_network(out)
        ct_crop = window.extract(net_out, HU_KNOTS[0])
        mask_crop = window.extract(lay.to_network(lesion), False)
        return _TextureJob(
            window=window, ct_crop=ct_crop, mask_crop=mask_crop,
            occupied_crop=window.extract(lay.to_network(occupied), False),
            image=to_tensor([normalize_ct(ct_crop)], self.device),
            mask_lat=to_tensor([latent_mask(mask_crop, self.factor)], self.device),
            context=encode_context(self.encoder, conditioning_texts(report, purpose="linet"), self.device),
            generator=torch_generator(rng, self.device),
        )

    def _run_wave(self, wave: list[_TextureJob], ctx: LesionContext, out: np.ndarray,
                  on_rendered: OnRendered | None, first: int) -> None:
        """Sample the wave's lesions together (per input shape) and write each into ``out`` in order; lesion
        ``first + k`` is the wave's k-th."""
        if wave:
            for k, (job, crop) in enumerate(zip(wave, self._sample_wave(wave))):
                self._write(job, crop, ctx, out)
                if on_rendered is not None:
                    on_rendered(first + k, out)

    def _sample_wave(self, wave: list[_TextureJob]) -> list[torch.Tensor]:
        def sample(image: torch.Tensor, context: torch.Tensor | None, gens: list[torch.Generator],
                   mask_lat: torch.Tensor) -> torch.Tensor:
            return inpaint_linet(self.unet, self.vq.module, image, mask_lat, context, steps=self.steps, eta=self.eta,
                                 generator=gens, precision=self.precision, sampler=self.sampler)

        return sample_in_batches([(job.image, job.context, job.generator, job.mask_lat) for job in wave], sample,
                                 max_batch=self.max_batch, pool_key=self)

    def _write(self, job: _TextureJob, generated: torch.Tensor, ctx: LesionContext, out: np.ndarray) -> None:
        """Blend one generated crop into ``out`` around its lesion (weight 0 voxels keep their exact value)."""
        net_out = self.layout.to_network(out)  # a view: writes land in `out`
        window, ct_crop = job.window, job.ct_crop
        hu = denormalize_ct(generated[0, 0].cpu().numpy())
        valid = window.valid(net_out.shape)
        weight = blend_weight(job.mask_crop, job.occupied_crop, self.dilate_voxels, self.blend_voxels)
        weight[~valid] = 0.0
        if self.mean_shift:
            hu += self.intensity_shift(ct_crop, hu, valid & (weight == 0))
        low = min(self.hu_range[0], float(ctx.ct.min()))
        high = max(self.hu_range[1], float(ctx.ct.max()))
        blended = np.clip(ct_crop + weight * (hu - ct_crop), low, high)
        vol, inner = window.overlap(net_out.shape)
        region = net_out[vol]
        touched = weight[inner] > 0
        region[touched] = blended[inner][touched]

    def intensity_shift(self, healthy: np.ndarray, decoded: np.ndarray, untouched: np.ndarray) -> float:
        """HU to add to the decoded crop so that it matches the healthy crop where nothing is written.

        Measured on body voxels only (healthy denser than ``body_threshold_hu``) and with the healthy CT in
        the network's window [-1000, 1000] HU, the only range the VQ can give back: air, padding and
        out-of-field voxels (-3024 HU) would otherwise shift the lesion by hundreds of HU.
        """
        body = untouched & (healthy > self.body_threshold_hu)
        if not body.any():
            return 0.0
        reference = np.clip(healthy[body], HU_KNOTS[0], HU_KNOTS[-1]).astype(np.float64)
        return float(reference.mean() - decoded[body].astype(np.float64).mean())
