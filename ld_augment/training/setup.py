"""What a training run starts from: the network config, the initial weights and the text encoder.

Three starts are supported, as the product promises: from scratch (a preset or a JSON config), from one of our
checkpoints (`save_checkpoint` files, e.g. to continue or fine-tune our own run) and from a released Lightning
file of the original authors. The text encoder must be the one the initial weights were trained with: the
released UNets were trained on BiomedCLIP embeddings, and a UNet fine-tuned on other embeddings would start
from weights that have never seen its context.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ld_augment.engines.diffusion.common import uses_text
from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.io.textfile import read_text_bounded
from ld_augment.io.network_layout import RELEASED, recorded_layout
from ld_augment.nets import (
    LINET_RELEASED_TRAIN, LINET_TINY, LMNET_RELEASED, LMNET_TINY, PRESETS, VQ_RELEASED, VQ_TINY, UNetConfig,
    VQConfig, build_network, config_from_dict, load_lightning_state_dict, save_checkpoint,
)
from ld_augment.nets.checkpoints import FORMAT, read_torch_file
from ld_augment.text import AttributeEncoder, create_encoder
from ld_augment.text.registry import ENCODER_IDS
from ld_augment.training import distributed as D
from ld_augment.training.loop import FitResult, TrainOptions, TrainPaths, global_batch, seeded_build
from ld_augment.training.recipe import Recipe, get_recipe

RECIPE = "recipe"  # default of a `spacing` argument: the recipe's grid

NetConfig = UNetConfig | VQConfig
EMA_UPDATES = "model_ema.num_updates"
RELEASED_ENCODER = "biomedclip"  # the text encoder of the authors' released LMNet/LINet
SIZE_PRESETS: dict[str, dict[str, NetConfig]] = {
    "lmnet": {"tiny": LMNET_TINY, "released": LMNET_RELEASED},
    "linet": {"tiny": LINET_TINY, "released": LINET_RELEASED_TRAIN},  # trained with cross-attention
    "vq": {"tiny": VQ_TINY, "released": VQ_RELEASED},
}


def resolve_config(kind: str, config: str | os.PathLike | NetConfig | Mapping[str, Any] | None) -> NetConfig | None:
    """A preset name ("tiny", "released" or a `nets.PRESETS` key), a JSON file, a dict or a config -> config.

    None stays None (the caller takes the config of the initial weights, else "released").
    """
    if config is None or isinstance(config, (UNetConfig, VQConfig)):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(config)
    elif str(config) in SIZE_PRESETS[kind]:
        cfg = SIZE_PRESETS[kind][str(config)]
    elif str(config) in PRESETS:
        cfg = PRESETS[str(config)]
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config {str(config)!r} is neither a preset ({', '.join(SIZE_PRESETS[kind])}, "
                              f"{', '.join(PRESETS)}) nor an existing JSON file")
        try:
            cfg = config_from_dict(json.loads(read_text_bounded(path, what="config file")))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON ({exc})") from None
    if cfg is not None:
        check_config(kind, cfg)
    return cfg


def check_config(kind: str, cfg: NetConfig) -> None:
    """The channel layout each network needs (LMNet 4 -> 1; LINet latent + mask; the VQ any UNet-free config)."""
    want = VQConfig if kind == "vq" else UNetConfig
    if not isinstance(cfg, want):
        raise ConfigError(f"{kind} needs a {want.__name__}, got a {type(cfg).__name__}")
    if kind == "lmnet" and (cfg.in_channels, cfg.out_channels) != (4, 1):  # type: ignore[union-attr]
        raise ConfigError(f"LMNet takes 4 input channels (x_t, organ map, organ mask, box) and predicts 1; the config "
                          f"has {cfg.in_channels} -> {cfg.out_channels}")  # type: ignore[union-attr]
    if kind == "linet" and cfg.out_channels != cfg.in_channels:  # type: ignore[union-attr]
        raise ConfigError(f"LINet predicts its latent eps plus a mask logit, so out_channels must equal in_channels; "
                          f"the config has {cfg.in_channels} -> {cfg.out_channels}")  # type: ignore[union-attr]


@dataclass
class InitWeights:
    """The initial network and where it came from ("scratch", "checkpoint" or "released")."""

    module: nn.Module
    cfg: NetConfig
    origin: str
    encoder_id: str | None
    text_encoder: Mapping[str, Any] | None  # {"name", "options"} recorded by our checkpoints
    layout: str | None = None  # array layout recorded by our checkpoints (old "orientation" records converted)
    raw_state: Mapping[str, torch.Tensor] | None = None  # a released file's model.* weights (module = its EMA)
    ema_updates: int | None = None  # a released file's model_ema.num_updates


def training_layout(start: InitWeights | None) -> str:
    """Array layout to train in (``ld_augment.io.network_layout``): the init's -- SAL for the authors' released
    files, whose loader fed [S, A, L] arrays; what our checkpoint recorded -- else SAL as well, so that crop
    sizes mean the same as the released ones and every network of this project shares one convention."""
    if start is None or start.origin == "released":
        return RELEASED
    return start.layout or RELEASED


def _load_into(cfg: NetConfig, state: Mapping[str, Any], source: str) -> nn.Module:
    module = build_network(cfg)
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"the weights of {source} do not fit the requested config ({first}); leave the config "
                          "out to use the checkpoint's own") from None
    return module


def load_init(kind: str, init: str | os.PathLike, cfg: NetConfig | None, *, allow_pickle: bool = False
              ) -> InitWeights:
    """Initial weights from our checkpoint or a released Lightning file (EMA weights preferred)."""
    raw = read_torch_file(init, allow_pickle=allow_pickle)
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        try:
            stored = config_from_dict(raw["config"])
        except ConfigError as exc:
            raise CheckpointError(f"{init}: invalid stored config: {exc}") from None
        check_config(kind, stored)
        use = cfg if cfg is not None else stored
        module = _load_into(use, raw["state_dict"], str(init))
        extra = raw.get("extra") or {}
        return InitWeights(module, use, "checkpoint", raw.get("encoder_id"), extra.get("text_encoder"),
                           recorded_layout(extra).codes)
    sd = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{init}: neither an ld-augment checkpoint nor a Lightning checkpoint")
    default = SIZE_PRESETS[kind]["released"]
    module, used = load_lightning_state_dict(sd, kind, config=cfg or default, source=str(init))
    raw_state, updates = None, None
    if kind != "vq" and EMA_UPDATES in sd:  # the EMA is what the original sampled with; training went on from model.*
        raw, _ = load_lightning_state_dict(sd, kind, use_ema=False, config=used, source=str(init))
        raw_state, updates = raw.state_dict(), int(sd[EMA_UPDATES])
    return InitWeights(module, used, "released", None if kind == "vq" else _encoder_id(RELEASED_ENCODER), None,
                       raw_state=raw_state, ema_updates=updates)


def _encoder_id(name: str) -> str:
    by_name = {v: k for k, v in ENCODER_IDS.items()}
    if name in ENCODER_IDS:
        return name
    if name not in by_name:
        raise ConfigError(f"unknown text encoder {name!r}; valid: {', '.join(sorted(by_name))}")
    return by_name[name]


def make_encoder(encoder: str | AttributeEncoder, options: Mapping[str, Any] | None, cfg: UNetConfig,
                 init: InitWeights | None) -> AttributeEncoder:
    """The frozen text encoder for a UNet run, checked against the initial weights and the config.

    The offline "vocab" encoder is kept frozen at its seeded initial vectors: the UNet's own bias-free context
    projection (512 x 512) can map those linearly independent vectors anywhere, so training the table too adds
    no capacity, and a frozen table is rebuilt exactly from the options recorded in the checkpoint.
    """
    wanted = encoder.encoder_id if isinstance(encoder, AttributeEncoder) else _encoder_id(encoder)
    if init is not None and init.encoder_id is not None and init.encoder_id != wanted:
        origin = ("a released LesionDiffusion checkpoint, trained on BiomedCLIP text embeddings"
                  if init.origin == "released" else "a checkpoint trained with that encoder")
        raise ConfigError(
            f"the initial weights need text encoder {init.encoder_id!r} ({origin}), but {wanted!r} was chosen; "
            f"use encoder={ENCODER_IDS.get(init.encoder_id, init.encoder_id)!r} (for BiomedCLIP pass its weights "
            "file via encoder options / --encoder-weights) or train from scratch without init"
        )
    if isinstance(encoder, AttributeEncoder):
        enc = encoder
    else:
        opts = dict(options or {})
        recorded = dict((init.text_encoder or {}).get("options", {})) if init is not None else {}
        name = ENCODER_IDS.get(wanted, wanted)
        if name == "vocab":
            for key, value in recorded.items():
                opts.setdefault(key, value)
            opts.setdefault("output_dim", cfg.context_dim or 512)
        enc = create_encoder(name, **opts)
    if uses_text(cfg) and enc.output_dim != cfg.context_dim:
        raise ConfigError(f"text encoder {enc.encoder_id!r} gives {enc.output_dim}-d vectors but the network's "
                          f"context_dim is {cfg.context_dim}")
    return enc.eval().requires_grad_(False)


def encoder_record(enc: AttributeEncoder) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the encoder: create_encoder(name, **options)."""
    return {"name": ENCODER_IDS.get(enc.encoder_id, enc.encoder_id), "id": enc.encoder_id,
            "options": json.loads(json.dumps(enc.options(), default=str))}


@dataclass(frozen=True)
class TrainResult:
    """Where a run wrote its files, and how it ended."""

    checkpoint: Path      # final weights (EMA when kept) in our format: load with nets.load_checkpoint
    state: Path           # resumable training state
    log: Path             # JSONL, one line per step
    steps: int
    encoder_id: str | None
    last_loss: float | None
    world_size: int = 1


SAMPLINGS = ("random", "sequential")


@dataclass(frozen=True)
class RunOptions:
    """Options every network shares beyond the basic ones: multi-process and logging knobs, data sampling.

    sampling "random" draws a random case per sample (the original's random_sample: true, with `iter_num`
    samples per epoch); "sequential" visits every case once per epoch in a seeded permutation, each rank its
    own share (random_sample: false). The epoch only numbers the log lines; the crops are the same functions
    of (seed, sample index) either way.
    """

    grad_accum: int = 1
    warmup_steps: int = 0
    grad_clip: float | None = None
    tensorboard: bool = False
    sample_every: int = 0
    sampling: str = "random"
    iter_num: int | None = None

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {self.sampling!r}; valid: {list(SAMPLINGS)}")
        if self.iter_num is not None and self.iter_num < 1:
            raise ConfigError(f"iter_num must be >= 1, got {self.iter_num}")

    def options(self, **basic: Any) -> TrainOptions:
        """TrainOptions from the network function's own arguments plus these."""
        return TrainOptions(**basic, grad_accum=self.grad_accum, warmup_steps=self.warmup_steps,
                            grad_clip=self.grad_clip, tensorboard=self.tensorboard, sample_every=self.sample_every)


def run_record(opts: TrainOptions, fitted: FitResult) -> dict[str, Any]:
    """The optimisation part of a checkpoint's training record, with the world size and global batch."""
    return {"steps": opts.steps, "batch_size": opts.batch_size, "lr": opts.lr, "ema_decay": opts.ema_decay,
            "optimizer": opts.optimizer, "betas": list(opts.betas), "weight_decay": opts.weight_decay,
            "seed": opts.seed, "precision": opts.precision, "grad_accum": opts.grad_accum,
            "warmup_steps": opts.warmup_steps, "grad_clip": opts.grad_clip, "world_size": fitted.ctx.world_size,
            "global_batch": global_batch(opts, fitted.ctx), "resumed_from_world_size": fitted.start_world_size}


def finish_run(name: str, out_dir: str | os.PathLike, fitted: FitResult, cfg: Any, *, encoder_id: str | None,
               extra: dict[str, Any], steps: int) -> TrainResult:
    """Rank 0 writes the final checkpoint; every rank waits for it, leaves the process group and reports."""
    paths = TrainPaths.for_run(out_dir, name)
    ctx = fitted.ctx
    if ctx.is_main:
        save_checkpoint(paths.final, fitted.module.cpu(), cfg, encoder_id=encoder_id, extra=extra)
    D.barrier(ctx)
    D.shutdown(ctx)
    return TrainResult(paths.final, paths.state, paths.log, steps, encoder_id, last_loss(paths.log),
                       ctx.world_size)


def last_loss(log_path: Path) -> float | None:
    """The loss of the last logged step (None before the first step)."""
    lines = log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else []
    return float(json.loads(lines[-1])["loss"]) if lines else None


def start_network(kind: str, config: Any, init: str | os.PathLike | None, seed: int, allow_pickle: bool
                  ) -> tuple[torch.nn.Module, Any, InitWeights | None]:
    """(network on CPU, config, initial-weights record): from `init` when given, else seeded from scratch."""
    cfg = resolve_config(kind, config)
    if init is not None:
        start = load_init(kind, init, cfg, allow_pickle=allow_pickle)
        return _freeze_unused(start.module.train(), start.cfg), start.cfg, start
    cfg = cfg if cfg is not None else resolve_config(kind, "released")
    return _freeze_unused(seeded_build(lambda: build_network(cfg), seed).train(), cfg), cfg, None


@dataclass(frozen=True)
class Prepared:
    """A run's network, recipe and optimiser settings once the initial weights are known."""

    model: torch.nn.Module
    cfg: Any
    start: InitWeights | None
    recipe: Recipe
    ema_start: tuple[dict[str, torch.Tensor], int] | None  # (EMA weights, update count) to continue


def prepare_run(kind: str, config: Any, init: str | os.PathLike | None, seed: int, allow_pickle: bool,
                recipe: str | None) -> Prepared:
    """The network to train and the recipe (default: "released" for a released init, else "ours").

    With a released init and the released recipe the network trains on from the file's raw `model.*` weights
    and the EMA continues from `model_ema.*` with its update count, as the original's fine-tune configs did;
    otherwise it starts from the EMA weights (what inference uses) with a fresh EMA.
    """
    model, cfg, start = start_network(kind, config, init, seed, allow_pickle)
    chosen = get_recipe(kind, recipe, None if start is None else start.origin)
    ema_start = None
    if chosen.continue_ema and start is not None and start.raw_state is not None:
        ema_start = ({k: v.detach().clone() for k, v in model.state_dict().items()}, int(start.ema_updates or 0))
        model.load_state_dict(start.raw_state)
    return Prepared(model, cfg, start, chosen, ema_start)


def recipe_options(prepared: Prepared, run: "RunOptions", *, lr: float | None, batch_size: int, ctx: D.DistContext,
                   **basic: Any) -> TrainOptions:
    """TrainOptions under the recipe: its optimiser, and its (scaled) LR unless `lr` is given explicitly."""
    recipe = prepared.recipe
    value = lr if lr is not None else recipe.learning_rate(world_size=ctx.world_size, batch_size=batch_size,
                                                           grad_accum=run.grad_accum)
    return run.options(lr=value, batch_size=batch_size, optimizer=recipe.optimizer, betas=recipe.betas,
                       weight_decay=recipe.weight_decay, **basic)


def recipe_spacing(recipe: Recipe, spacing: Any) -> Sequence[float] | None:
    """The crop grid: `spacing` when given explicitly, else the recipe's (released: native spacing)."""
    return recipe.spacing if isinstance(spacing, str) and spacing == RECIPE else spacing


def _freeze_unused(module: nn.Module, cfg: NetConfig) -> nn.Module:
    """Freeze the text projection of a UNet that ignores the text (skip_context, e.g. the released LINet).

    It never gets a gradient, so training leaves it unchanged either way; frozen, DDP need not search every
    step for parameters without gradients (find_unused_parameters), and AdamW holds no state for it.
    """
    if isinstance(cfg, UNetConfig) and not uses_text(cfg):
        for name, param in module.named_parameters():
            if name.startswith("context_linear_projection."):
                param.requires_grad_(False)
    return module
