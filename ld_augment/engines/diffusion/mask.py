"""LMNet as a mask engine: report text + organ maps + box -> a lesion mask drawn by DDIM (ARCHITECTURE.md 3, 6).

Per lesion, as the original inference: a crop (released 64 x 152 x 152 voxels, in the array's axis order)
centred on the box and clamped to the volume; 4 input channels [x_t, organ map as TotalSegmentator v1 ids / 104,
target-organ mask, box mask]; the text of ``conditioning_texts(purpose="lmnet")``; DDIM (released: 200 steps,
eta 1.0); then a threshold search over 0.9, 0.8, ..., 0.3 that keeps the largest connected component whose
voxel count is closest to a reference count -- here the volume of the ellipsoid inscribed in the box, since a
reported box (not a coarse label) is what we start from. Unlike the original, the search runs on the part of the
soft mask that the report's cavity rule allows (inside the organ, or inside organ/body for "protruding") and that
no earlier lesion occupies, so the count that is matched is the count that is kept. A result below
``min_voxels`` is redrawn once (``max_attempts`` 2, as the original) before a readable error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ld_augment.engines.attributes import lesion_spec
from ld_augment.engines.base import LesionContext, MaskEngine
from ld_augment.engines.diffusion.common import (
    RELEASED_ETA, RELEASED_STEPS, check_crop_divisible, check_sampling, encode_context,
)
from ld_augment.engines.diffusion.crops import CropWindow, check_crop, fit_crop, to_network_axes
from ld_augment.engines.diffusion.loading import (
    PathArg, check_encoder_available, encoder_id, load_unet, network_orientation_of,
    text_encoder_for,
)
from ld_augment.engines.diffusion.sampling import sample_lmnet, to_tensor, torch_generator
from ld_augment.engines.procedural.fields import largest_component
from ld_augment.errors import ConfigError
from ld_augment.nets import maybe_compile, resolve_device, resolve_precision
from ld_augment.organs.masks import LABEL_VERSIONS, detect_label_version
from ld_augment.organs.registry import convert_labels
from ld_augment.placement.bboxes import PROTRUDING, BBox, cavity_rule
from ld_augment.reports.conditioning import conditioning_texts
from ld_augment.text import AttributeEncoder

#: The original's threshold search, np.arange(0.9, 0.2, -0.1): seven values, highest first (ties keep the first).
THRESHOLDS = tuple(round(0.9 - 0.1 * i, 1) for i in range(7))
SEG_SCALE = 104.0  # the organ-map channel is the v1 label id / 104 (v1's largest id)


def pick_threshold(soft: np.ndarray, allowed: np.ndarray, reference: float,
                   thresholds: Sequence[float] = THRESHOLDS) -> tuple[np.ndarray, float | None]:
    """Largest component of ``(soft > t) & allowed`` for the ``t`` whose voxel count is closest to ``reference``."""
    best, best_t, best_gap = np.zeros(soft.shape, bool), None, math.inf
    for t in thresholds:
        candidate = (soft > t) & allowed
        if not candidate.any():
            continue
        candidate = largest_component(candidate)
        gap = abs(int(candidate.sum()) - reference)
        if gap < best_gap:
            best, best_t, best_gap = candidate, float(t), gap
    return best, best_t


def organ_map_v1(seg: np.ndarray, organ_mask: np.ndarray, version: str, organ_id_v1: int) -> np.ndarray:
    """The organ map in TotalSegmentator v1 ids, which LMNet was trained on.

    v2 maps are relabelled by class name; a binary map carries only the target organ, so it becomes that
    organ's v1 id (the report's key) inside the organ mask.
    """
    if version == "v2":
        return convert_labels(seg, "v2", "v1")
    if version == "binary":
        return organ_mask.astype(np.int64) * int(organ_id_v1)
    return np.asarray(seg)


class DiffusionMaskEngine(MaskEngine):
    """LMNet mask engine; defaults are the released inference settings (200 DDIM steps, eta 1.0, 64x152x152 crop).

    Weights: ``checkpoint`` (ld-augment format, its recorded text encoder must match ``encoder``) or
    ``lightning_checkpoint`` (the released LMNet.ckpt, EMA weights; needs ``encoder="biomedclip"`` and
    ``encoder_weights``), or only ``config`` (a preset name/UNetConfig: random weights, for tests and
    benchmarks). ``label_version`` ("auto", "v1", "v2", "binary") says how ``ctx.organ_seg`` is numbered; v2
    maps are converted to v1 ids, which is what the network was trained on. Randomness comes only from the rng
    passed to ``generate_mask`` (it seeds a torch.Generator on ``device``). ``network_orientation`` ("RAS",
    "LPS"; default: LPS for the released files, else the checkpoint's recorded one) is the array orientation
    the network was trained in; crops of our RAS grid are mirrored into it and the result mirrored back.
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
        encoder: str | AttributeEncoder = "biomedclip",
        encoder_weights: PathArg = None,
        steps: int = RELEASED_STEPS,
        eta: float = RELEASED_ETA,
        crop: Sequence[int] = (64, 152, 152),
        device: str = "cpu",
        precision: str = "auto",
        sampler: str = "ddim",
        compile: str | None = None,
        config: Any = None,
        label_version: str = "auto",
        max_attempts: int = 2,
        min_voxels: int | None = None,
        body_threshold_hu: float = -500.0,
        use_ema: bool = True,
        allow_pickle: bool = False,
        init_seed: int = 0,
        network_orientation: str | None = None,
    ) -> None:
        self.steps, self.eta, self.precision = check_sampling(steps, eta, precision, sampler)
        self.sampler, self.compile = sampler, compile
        self.crop = check_crop(crop, "crop")
        if label_version != "auto" and label_version not in LABEL_VERSIONS:
            raise ConfigError(f"label_version must be 'auto' or one of {list(LABEL_VERSIONS)}, got {label_version!r}")
        if int(max_attempts) < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        self.label_version, self.max_attempts = label_version, int(max_attempts)
        self.min_voxels = None if min_voxels is None else int(min_voxels)
        self.body_threshold_hu = float(body_threshold_hu)
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.precision, self.device)  # "auto": bf16 on CUDA, fp32 on CPU
        check_encoder_available(encoder, encoder_weights)  # before reading a large checkpoint
        self.net = load_unet("lmnet", checkpoint=checkpoint, lightning_checkpoint=lightning_checkpoint, config=config,
                             expected_encoder=encoder_id(encoder), device=self.device, use_ema=use_ema,
                             allow_pickle=allow_pickle, init_seed=init_seed)
        check_crop_divisible(self.crop, self.net.module.spatial_divisor, "crop")
        self.unet = maybe_compile(self.net.module, compile)
        self.orientation = network_orientation_of(network_orientation, self.net.record)
        self.encoder, self.encoder_record = text_encoder_for(self.net, encoder, weights=encoder_weights,
                                                             device=self.device)

    def provenance(self) -> dict:
        return {
            "engine": self.name, "network": "lmnet", "steps": self.steps, "eta": self.eta,
            "encoder_id": self.encoder_record.get("id"),
            "options": {"crop": list(self.crop), "device": str(self.device), "precision": self.precision,
                        "sampler": self.sampler, "compile": self.compile,
                        "label_version": self.label_version, "max_attempts": self.max_attempts,
                        "min_voxels": self.min_voxels, "body_threshold_hu": self.body_threshold_hu,
                        "network_orientation": self.orientation,
                        "thresholds": list(THRESHOLDS)},
            "checkpoints": {"lmnet": self.net.record}, "encoder": self.encoder_record,
        }

    def generate_mask(self, ctx: LesionContext, bbox: BBox, report: Any, rng: np.random.Generator) -> np.ndarray:
        shape = ctx.ct.shape
        start, stop = np.array(bbox.start(shape)), np.array(bbox.stop(shape))
        if np.any(stop <= start):
            raise ConfigError(f"bbox {bbox.to_dict()} lies outside the volume of shape {shape}")
        rule = cavity_rule(getattr(report, "cavity", None), ctx.organ_name)
        size = fit_crop(self.crop, stop - start, self.net.module.spatial_divisor)
        window = CropWindow.around((start + stop - 1) / 2.0, size, shape)
        cond = to_tensor([to_network_axes(c, self.orientation) for c in self._channels(ctx, bbox, report, window)],
                         self.device)
        allowed = self._allowed(ctx, rule, window)
        context = encode_context(self.encoder, conditioning_texts(report, purpose="lmnet"), self.device)
        reference = math.pi / 6.0 * float(np.prod(bbox.size))  # ellipsoid inscribed in the box
        needed = self._min_voxels(report, reference)
        generator = torch_generator(rng, self.device)
        largest = 0
        for _ in range(self.max_attempts):
            soft = sample_lmnet(self.unet, cond, context, steps=self.steps, eta=self.eta,
                                generator=generator, precision=self.precision, sampler=self.sampler)
            soft_ras = to_network_axes(soft[0, 0].float().cpu().numpy(), self.orientation)
            lesion, _ = pick_threshold(soft_ras, allowed, reference)
            largest = max(largest, int(lesion.sum()))
            if lesion.sum() >= needed:
                return window.paste(lesion, shape)
        raise ConfigError(
            f"diffusion mask engine: no usable lesion for organ {ctx.organ_name!r} in bbox {bbox.to_dict()} after "
            f"{self.max_attempts} attempts (largest {largest} voxels, need >= {needed} inside the region of cavity "
            f"rule {rule!r}, outside earlier lesions); try another seed, a larger box or mask_engine='procedural'"
        )

    def _min_voxels(self, report: Any, reference: float) -> int:
        """The original accepts > 400 voxels (> 50 for stones); capped at 10 % of the reference for small boxes."""
        if self.min_voxels is not None:
            return self.min_voxels
        floor = 50 if lesion_spec(report).stone else 400
        return max(1, min(floor, math.ceil(0.1 * reference)))

    def _channels(self, ctx: LesionContext, bbox: BBox, report: Any, window: CropWindow) -> list[np.ndarray]:
        box = np.zeros(window.size, bool)
        lo = [max(a - w, 0) for a, w in zip(bbox.start(ctx.ct.shape), window.start)]
        hi = [max(b - w, 0) for b, w in zip(bbox.stop(ctx.ct.shape), window.start)]
        box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        version = self.label_version if self.label_version != "auto" else detect_label_version(ctx.organ_seg)
        seg = organ_map_v1(window.extract(np.asarray(ctx.organ_seg), 0), window.extract(ctx.organ_mask, False),
                           version, int(report.organ_id))
        organ_map = seg.astype(np.float32) / SEG_SCALE
        return [organ_map, window.extract(ctx.organ_mask, False), box]

    def _allowed(self, ctx: LesionContext, rule: str, window: CropWindow) -> np.ndarray:
        organ = window.extract(ctx.organ_mask, False)
        if rule == PROTRUDING:  # may leave the organ, not into air outside the body
            organ = organ | (window.extract(ctx.ct, -1024.0) > self.body_threshold_hu)
        return organ & ~window.extract(ctx.occupied, True)
