"""LMNet as a mask engine: report text + organ maps + box -> a lesion mask drawn by DDIM (ARCHITECTURE.md 3, 6).

Per lesion, as the original inference: the volume is looked at in the network's array layout (``SAL`` =
[S, A, L] for the released files, ``ld_augment.io.network_layout``); a crop (released 64 x 152 x 152 voxels,
network order) centred on the box and clamped to the volume; 4 input channels [x_t, organ map as
TotalSegmentator v1 ids / 104, target-organ mask, box mask]; the text of ``conditioning_texts(purpose="lmnet")``
with the cavity phrase of ``cavity_text``; DDIM (released: 200 steps, eta 1.0); then the selection of
``selection.py``. ``selection="released"`` (default for the released files) is the original's: the threshold
search on the unconstrained soft mask aiming at the box's voxel count, accept > 400 voxels (> 50 for stones)
without overlap, one retry, a small non-overlapping last try kept, and a lesion that still fails is skipped
(an empty mask; ``skips_failed_lesions``). ``selection="constrained"`` (default for our checkpoints) aims at
the inscribed ellipsoid, searches only where the report's cavity rule allows and nothing is drawn yet, and
raises when no usable lesion comes out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ld_augment.engines.base import LesionContext, MaskEngine, check_one_each
from ld_augment.engines.diffusion.batching import DEFAULT_MAX_BATCH, check_max_batch, sample_in_batches
from ld_augment.engines.diffusion.common import (
    RELEASED_ETA, RELEASED_STEPS, check_crop_divisible, check_sampling, encode_context,
)
from ld_augment.engines.diffusion.crops import WINDOWS, CropWindow, check_crop, fit_crop
from ld_augment.engines.diffusion.loading import (
    PathArg, check_encoder_available, encoder_id, is_released, load_unet, network_layout_of, text_encoder_for,
)
from ld_augment.engines.diffusion.sampling import sample_lmnet, to_tensor, torch_generator
from ld_augment.engines.diffusion.selection import (
    ACCEPT_VOXELS, ACCEPT_VOXELS_STONE, MAX_LESIONS, MIN_BOX_VOXELS, THRESHOLDS, accepts, pick_threshold,
    plan_boxes, reference_count, selection_rule,
)
from ld_augment.errors import ConfigError
from ld_augment.io.network_layout import NetworkLayout
from ld_augment.nets import maybe_compile, resolve_device, resolve_precision
from ld_augment.organs.masks import LABEL_VERSIONS, detect_label_version
from ld_augment.organs.registry import convert_labels
from ld_augment.placement.bboxes import PROTRUDING, BBox, cavity_rule
from ld_augment.reports.conditioning import CAVITY_TEXTS, conditioning_texts, is_stone
from ld_augment.text import AttributeEncoder

SEG_SCALE = 104.0  # the organ-map channel is the v1 label id / 104 (v1's largest id)


@dataclass(frozen=True)
class _MaskJob:
    """One lesion's network inputs and selection targets, prepared before any sampling."""

    bbox: BBox
    report: Any
    window: CropWindow
    cond: torch.Tensor
    context: torch.Tensor | None
    reference: float
    floor: int
    generator: torch.Generator


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
    passed to ``generate_mask`` (it seeds a torch.Generator on ``device``).

    ``network_layout`` (default: "SAL" for the released files, else the checkpoint's record) is the array
    layout the network was trained in; ``crop`` is in that layout's order. ``selection`` ("released" /
    "constrained") and ``cavity_text`` ("released" / "report") default to the original's behaviour for the
    released files and to ours for our checkpoints (module doc). ``max_attempts`` (2) and ``min_voxels``
    (a lesion needs more voxels than this; None: the original's 400, 50 for stones, capped at 10 % of the
    target count in constrained selection) tune the acceptance; ``max_lesions`` (3, None = no cap) is the
    per-case cap of released selection (``plan_lesions``). ``window`` ("fixed" / "grow", ``crops.WINDOWS``):
    the original keeps the fixed crop and cuts a longer box (default for the released files), ours grows it.
    Speed options: ``sampler`` "ddim" (the original) or a few-step solver ("dpmsolver++", "unipc", ...; then
    ``steps`` is the number of network calls, e.g. 20); ``precision`` "auto" = bf16 autocast on CUDA (the
    released files: the precision the original ran them in, LMNet fp32 / LINet fp16; bf16 by asking), fp32 on
    CPU; ``compile`` a torch.compile mode ("reduce-overhead" adds CUDA graphs), None for eager; ``max_batch``
    lesions share one network call in ``generate_masks``.
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
        max_batch: int = DEFAULT_MAX_BATCH,
        config: Any = None,
        label_version: str = "auto",
        max_attempts: int = 2,
        min_voxels: int | None = None,
        body_threshold_hu: float = -500.0,
        use_ema: bool = True,
        allow_pickle: bool = False,
        init_seed: int = 0,
        network_layout: str | NetworkLayout | None = None,
        selection: str | None = None,
        cavity_text: str | None = None,
        max_lesions: int | None = MAX_LESIONS,
        window: str | None = None,
    ) -> None:
        self.steps, self.eta, self.precision = check_sampling(steps, eta, precision, sampler)
        self.sampler, self.compile = sampler, compile
        self.max_batch = check_max_batch(max_batch)
        self.crop = check_crop(crop, "crop")
        if label_version != "auto" and label_version not in LABEL_VERSIONS:
            raise ConfigError(f"label_version must be 'auto' or one of {list(LABEL_VERSIONS)}, got {label_version!r}")
        if int(max_attempts) < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        if max_lesions is not None and int(max_lesions) < 1:
            raise ConfigError(f"max_lesions must be >= 1 or None (no cap), got {max_lesions}")
        if selection is not None:
            selection_rule(selection)  # a typo fails before checkpoints are read
        if cavity_text is not None and cavity_text not in CAVITY_TEXTS:
            raise ConfigError(f"cavity_text must be one of {list(CAVITY_TEXTS)}, got {cavity_text!r}")
        self.label_version, self.max_attempts = label_version, int(max_attempts)
        self.min_voxels = None if min_voxels is None else int(min_voxels)
        self.max_lesions = None if max_lesions is None else int(max_lesions)
        self.body_threshold_hu = float(body_threshold_hu)
        self.device = resolve_device(device)
        if window is not None and window not in WINDOWS:
            raise ConfigError(f"window must be one of {list(WINDOWS)}, got {window!r}")
        check_encoder_available(encoder, encoder_weights)  # before reading a large checkpoint
        self.net = load_unet("lmnet", checkpoint=checkpoint, lightning_checkpoint=lightning_checkpoint, config=config,
                             expected_encoder=encoder_id(encoder), device=self.device, use_ema=use_ema,
                             allow_pickle=allow_pickle, init_seed=init_seed)
        check_crop_divisible(self.crop, self.net.module.spatial_divisor, "crop")
        self.unet = maybe_compile(self.net.module, compile)
        self.layout = network_layout_of(network_layout, self.net.record)
        released = is_released(self.net.record)
        self.rule = selection_rule(selection or ("released" if released else "constrained"))
        self.cavity_text = cavity_text or ("released" if released else "report")
        self.window = window or ("fixed" if released else "grow")
        # "auto": the original's fp32 for the released LMNet on CUDA, else bf16 on CUDA; fp32 on CPU
        self.precision = resolve_precision(self.precision, self.device, "lmnet" if released else None)
        self.encoder, self.encoder_record = text_encoder_for(self.net, encoder, weights=encoder_weights,
                                                             device=self.device)

    @property
    def skips_failed_lesions(self) -> bool:
        """True when a lesion that fails selection comes back empty (the original drops it) instead of raising."""
        return self.rule.keep_last

    def plan_lesions(self, boxes: Sequence[BBox], shape: Sequence[int]) -> list[int]:
        """Indices of ``boxes`` to draw, in order. Released selection: the original's > 50 voxels, largest
        first, at most ``max_lesions`` (the largest box alone when none has more); constrained: every box in
        the given order."""
        if not self.rule.keep_last:
            return list(range(len(boxes)))
        voxels = [int(np.prod([b - a for a, b in zip(box.start(shape), box.stop(shape))])) for box in boxes]
        return plan_boxes(voxels, max_lesions=self.max_lesions, min_voxels=MIN_BOX_VOXELS, fallback_largest=True)

    def provenance(self) -> dict:
        return {
            "engine": self.name, "network": "lmnet", "steps": self.steps, "eta": self.eta,
            "encoder_id": self.encoder_record.get("id"),
            "options": {"crop": list(self.crop), "device": str(self.device), "precision": self.precision,
                        "sampler": self.sampler, "compile": self.compile,
                        "max_batch": self.max_batch,
                        "label_version": self.label_version, "max_attempts": self.max_attempts,
                        "min_voxels": self.min_voxels, "body_threshold_hu": self.body_threshold_hu,
                        "network_layout": self.layout.codes, "selection": self.rule.to_dict(),
                        "cavity_text": self.cavity_text, "max_lesions": self.max_lesions, "window": self.window,
                        "thresholds": [round(t, 1) for t in THRESHOLDS]},
            "checkpoints": {"lmnet": self.net.record}, "encoder": self.encoder_record,
        }

    def generate_mask(self, ctx: LesionContext, bbox: BBox, report: Any, rng: np.random.Generator) -> np.ndarray:
        return self.generate_masks(ctx, [bbox], [report], [rng])[0]

    def generate_masks(self, ctx: LesionContext, bboxes: Sequence[BBox], reports: Sequence[Any],
                       rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        """Several lesions of one case, each with its own box, report and rng; first draws in one batch.

        Gives what ``generate_mask`` gives lesion after lesion with ``ctx.occupied`` grown by each earlier
        result and the same rngs: the batch only shares the network calls (``batching.sample_in_batches``);
        the selection, and any retry, still runs per lesion in order.
        """
        check_one_each("boxes", bboxes, reports, rngs)
        jobs = [self._prepare(ctx, bbox, report, rng) for bbox, report, rng in zip(bboxes, reports, rngs)]
        firsts = sample_in_batches(
            [(job.cond, job.context, job.generator) for job in jobs],
            lambda cond, context, gens: sample_lmnet(self.unet, cond, context, steps=self.steps, eta=self.eta,
                                                     generator=gens, precision=self.precision,
                                                     sampler=self.sampler),
            max_batch=self.max_batch, pool_key=self,
        )
        occupied, masks = np.array(ctx.occupied, dtype=bool, copy=True), []
        for job, soft in zip(jobs, firsts):
            mask = self._select(ctx, job, soft, occupied)
            occupied |= mask
            masks.append(mask)
        return masks

    def _prepare(self, ctx: LesionContext, bbox: BBox, report: Any, rng: np.random.Generator) -> _MaskJob:
        grid = ctx.ct.shape
        start, stop = bbox.start(grid), bbox.stop(grid)
        if any(b <= a for a, b in zip(start, stop)):
            raise ConfigError(f"bbox {bbox.to_dict()} lies outside the volume of shape {grid}")
        lay = self.layout
        lo, hi = lay.box_to_network(start, stop, grid)
        if self.window == "fixed":  # the original: the trained crop, a longer box is cut to it
            size = self.crop
        else:  # one spare voxel: the window's floored centre sits left of an even box's middle (the original's rule)
            size = fit_crop(self.crop, [b - a + 1 for a, b in zip(lo, hi)], self.net.module.spatial_divisor)
        window = CropWindow.for_box(lo, hi, size, lay.network_shape(grid))
        cond = to_tensor(self.channels(ctx, lo, hi, report, window), self.device)
        texts = conditioning_texts(report, purpose="lmnet", cavity_text=self.cavity_text)  # type: ignore[arg-type]
        context = encode_context(self.encoder, texts, self.device)
        # the count to match: the box's voxels inside the window (the whole box unless a fixed window cuts it)
        inside = [max(0, min(b, w + s) - max(a, w)) for a, b, w, s in zip(lo, hi, window.start, window.size)]
        reference = reference_count(self.rule, int(np.prod(inside)))
        return _MaskJob(bbox, report, window, cond, context, reference, self._floor(report, reference),
                        torch_generator(rng, self.device))

    def _select(self, ctx: LesionContext, job: _MaskJob, soft: torch.Tensor, occupied_volume: np.ndarray
                ) -> np.ndarray:
        """The selection of one lesion from its first draw; later attempts draw again with its own generator."""
        lay, grid, window = self.layout, ctx.ct.shape, job.window
        shape = lay.network_shape(grid)
        occupied = window.extract(lay.to_network(occupied_volume), False)
        allowed = self._allowed(ctx, job.report, window) & ~occupied if self.rule.constrain else None
        largest = 0
        for attempt in range(self.max_attempts):
            if attempt:
                soft = sample_lmnet(self.unet, job.cond, job.context, steps=self.steps, eta=self.eta,
                                    generator=job.generator, precision=self.precision, sampler=self.sampler)
            lesion, _ = pick_threshold(soft[0, 0].float().cpu().numpy(), job.reference, allowed)
            count = int(lesion.sum())
            largest = max(largest, count)
            if accepts(count, bool((lesion & occupied).any()), job.floor, last=attempt == self.max_attempts - 1,
                       keep_last=self.rule.keep_last):
                return np.ascontiguousarray(lay.from_network(window.paste(lesion, shape)))
        if self.rule.keep_last:  # the original drops the lesion
            return np.zeros(grid, dtype=bool)
        raise ConfigError(
            f"diffusion mask engine: no usable lesion for organ {ctx.organ_name!r} in bbox {job.bbox.to_dict()} "
            f"after {self.max_attempts} attempts (largest {largest} voxels, need > {job.floor} inside the region of "
            "the report's cavity rule, outside earlier lesions); try another seed, a larger box or "
            "mask_engine='procedural'"
        )

    def _floor(self, report: Any, reference: float) -> int:
        """Accept more than this many voxels: the original's 400 (50 for stones); constrained selection caps it
        at 10 % of the reference so that small boxes can succeed."""
        if self.min_voxels is not None:
            return self.min_voxels
        floor = ACCEPT_VOXELS_STONE if is_stone(report) else ACCEPT_VOXELS
        if self.rule.constrain:
            floor = min(floor, math.ceil(0.1 * reference) - 1)
        return max(0, floor)

    def channels(self, ctx: LesionContext, lo: Sequence[int], hi: Sequence[int], report: Any,
                 window: CropWindow) -> list[np.ndarray]:
        """The three condition channels in network order: organ map (v1 id / 104), target organ, box."""
        lay = self.layout
        box = np.zeros(window.size, np.float32)
        a = [min(max(x - w, 0), s) for x, w, s in zip(lo, window.start, window.size)]
        b = [min(max(x - w, 0), s) for x, w, s in zip(hi, window.start, window.size)]
        box[tuple(slice(x, y) for x, y in zip(a, b))] = 1.0
        version = self.label_version if self.label_version != "auto" else detect_label_version(ctx.organ_seg)
        organ = window.extract(lay.to_network(ctx.organ_mask), False)
        seg = organ_map_v1(window.extract(lay.to_network(np.asarray(ctx.organ_seg)), 0), organ, version,
                           int(report.organ_id))
        return [seg.astype(np.float32) / np.float32(SEG_SCALE), organ.astype(np.float32), box]

    def _allowed(self, ctx: LesionContext, report: Any, window: CropWindow) -> np.ndarray:
        """Where the report's cavity rule lets a lesion lie (constrained selection), in network order."""
        lay = self.layout
        organ = window.extract(lay.to_network(ctx.organ_mask), False)
        if cavity_rule(getattr(report, "cavity", None), ctx.organ_name) == PROTRUDING:  # not into air
            organ = organ | (window.extract(lay.to_network(ctx.ct), -1024.0) > self.body_threshold_hu)
        return organ
