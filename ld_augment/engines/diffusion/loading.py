"""Networks and text encoders for the diffusion engines, from either checkpoint format, with provenance.

Three sources per network, checked in this order so a user's mistake is reported before anything heavy runs:
our checkpoint (``checkpoint=``: weights + config + the text-encoder id it was trained with), a released
Lightning file (``lightning_checkpoint=``: LMNet.ckpt / LINet.ckpt / VQ.ckpt, whose UNets were trained on
BiomedCLIP embeddings), or only a ``config`` (random weights from ``init_seed``: tests and benchmarks). Every
loaded file is hashed, so a synthesized lesion records exactly which weights drew it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ld_augment.engines.diffusion.common import uses_text
from ld_augment.errors import CheckpointError, ConfigError, MissingDependencyError
from ld_augment.io.network_layout import RELEASED, NetworkLayout, layout, recorded_layout
from ld_augment.io.nifti import sha256_file
from ld_augment.nets import (
    PRESETS, UNetConfig, VQConfig, build_network, config_from_dict, load_checkpoint, load_lightning_checkpoint,
    resolve_device,
)
from ld_augment.nets.checkpoints import read_torch_file
from ld_augment.text import AttributeEncoder, create_encoder
from ld_augment.text.biomedclip import ENCODER_ID as BIOMEDCLIP_ID
from ld_augment.text.biomedclip import HUB_NAME, WEIGHTS_FILE
from ld_augment.text.offline import ENCODER_ID as VOCAB_ID

ENCODER_IDS = {"biomedclip": BIOMEDCLIP_ID, "vocab": VOCAB_ID}
RELEASED_ENCODER_ID = BIOMEDCLIP_ID  # the released LMNet/LINet were trained on BiomedCLIP embeddings
PathArg = str | os.PathLike | None
ConfigArg = UNetConfig | VQConfig | str | Mapping[str, Any] | None


@dataclass
class LoadedNetwork:
    """A network in eval mode, its config, and where its weights came from (for provenance)."""

    module: nn.Module
    cfg: UNetConfig | VQConfig
    record: dict[str, Any]


def encoder_id(encoder: str | AttributeEncoder) -> str:
    """The id a checkpoint records for an encoder name ("biomedclip", "vocab") or instance."""
    if isinstance(encoder, AttributeEncoder):
        return encoder.encoder_id
    if encoder not in ENCODER_IDS:
        raise ConfigError(f"unknown text encoder {encoder!r}; valid: {sorted(ENCODER_IDS)} or an AttributeEncoder")
    return ENCODER_IDS[encoder]


def resolve_config(config: ConfigArg, wanted: type) -> UNetConfig | VQConfig | None:
    """A config object from an instance, a preset name ("lmnet_tiny", ...) or a dict."""
    if config is None or isinstance(config, wanted):
        return config  # type: ignore[return-value]
    if isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown network preset {config!r}; valid: {sorted(PRESETS)}")
        config = PRESETS[config]
    elif isinstance(config, Mapping):
        config = config_from_dict(config)
    if not isinstance(config, wanted):
        raise ConfigError(f"expected a {wanted.__name__} (or preset name/dict), got {type(config).__name__}")
    return config


def _file_record(path: PathArg, source: str) -> dict[str, Any]:
    p = Path(path)  # type: ignore[arg-type]
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    return {"source": source, "path": str(p), "sha256": sha256_file(p)}


def _with_config(module: nn.Module, cfg: UNetConfig | VQConfig, device: torch.device) -> nn.Module:
    """Rebuild ``module`` for another config of the same weight layout (e.g. skip_context switched)."""
    if getattr(module, "cfg", None) == cfg:
        return module
    rebuilt = build_network(cfg, "meta")
    rebuilt.load_state_dict(module.state_dict(), strict=True, assign=True)
    return rebuilt.to(device).eval()


def _random(cfg: UNetConfig | VQConfig, init_seed: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left untouched
        torch.manual_seed(int(init_seed))
        module = build_network(cfg, "cpu")
    return module.to(device).eval()


def load_unet(kind: str, *, checkpoint: PathArg, lightning_checkpoint: PathArg, config: ConfigArg,
              expected_encoder: str, device: str | torch.device, skip_context: bool | None = None,
              use_ema: bool = True, allow_pickle: bool = False, init_seed: int = 0) -> LoadedNetwork:
    """LMNet (kind "lmnet") or LINet ("linet") from one of the three sources (see the module doc).

    ``expected_encoder`` is the id of the text encoder that will build the context: a network trained with
    another encoder is a CheckpointError unless it ignores the text (skip_context).
    """
    dev = resolve_device(device)
    cfg = resolve_config(config, UNetConfig)
    if skip_context is not None and cfg is not None:
        cfg = dataclasses.replace(cfg, skip_context=bool(skip_context))
    if checkpoint is not None and lightning_checkpoint is not None:
        raise ConfigError(f"{kind}: pass checkpoint= (ld-augment format) or lightning_checkpoint=, not both")
    if checkpoint is not None:
        record = _file_record(checkpoint, "ld-augment")
        module, cfg_loaded, meta = load_checkpoint(checkpoint, device=dev)
        if not isinstance(cfg_loaded, UNetConfig):
            raise CheckpointError(f"{checkpoint}: holds a {meta.get('network')} network, not the {kind} UNet")
        stored = meta.get("encoder_id")
        uses_text = not (cfg_loaded.skip_context if skip_context is None else skip_context)
        if uses_text and stored != expected_encoder:
            raise CheckpointError(
                f"{checkpoint}: the {kind} network was trained with text encoder {stored!r} but the engine is "
                f"configured with {expected_encoder!r}; pass the matching encoder= (embeddings differ) or retrain"
            )
        record["encoder_id"] = stored
        # how training built the text encoder (create_encoder(name, **options)), to rebuild it identically
        record["text_encoder"] = (meta.get("extra") or {}).get("text_encoder")
        # the array layout it was trained in; a pre-layout checkpoint's "orientation" record converts
        record["layout"] = recorded_layout(meta.get("extra")).codes
        record["released"] = bool((meta.get("extra") or {}).get("released"))  # a converted released file
        if skip_context is not None:
            cfg_loaded = dataclasses.replace(cfg_loaded, skip_context=bool(skip_context))
        module, cfg = _with_config(module, cfg_loaded, dev), cfg_loaded
    elif lightning_checkpoint is not None:
        record = _file_record(lightning_checkpoint, "lightning")
        module, cfg = load_lightning_checkpoint(lightning_checkpoint, kind, use_ema=use_ema, config=cfg,
                                                allow_pickle=allow_pickle, device=dev)
        if not cfg.skip_context and expected_encoder != RELEASED_ENCODER_ID:  # type: ignore[union-attr]
            raise CheckpointError(
                f"{lightning_checkpoint}: the released {kind} was trained on BiomedCLIP embeddings "
                f"({RELEASED_ENCODER_ID}) but the engine is configured with {expected_encoder!r}; "
                "use encoder='biomedclip'"
            )
        record.update(encoder_id=RELEASED_ENCODER_ID, weights="ema" if use_ema else "model", layout=RELEASED)
    elif cfg is not None:
        module = _random(cfg, init_seed, dev)
        record = {"source": "random", "init_seed": int(init_seed), "encoder_id": expected_encoder}
    else:
        raise CheckpointError(
            f"the diffusion engine needs {kind} weights: pass checkpoint=<ld-augment .pt> or "
            f"lightning_checkpoint=<{'LMNet' if kind == 'lmnet' else 'LINet'}.ckpt of the release> "
            "(or config=<preset> for random weights, tests only)"
        )
    in_channels = {"lmnet": 4, "linet": 5}[kind]
    if cfg.in_channels != in_channels:  # type: ignore[union-attr]
        raise CheckpointError(f"{record.get('path', kind)}: expected a {kind} UNet with {in_channels} input "
                              f"channels, got {cfg.in_channels}")  # type: ignore[union-attr]
    record["config"] = cfg.to_dict()  # type: ignore[union-attr]
    return LoadedNetwork(module, cfg, record)  # type: ignore[arg-type]


def load_vq(*, checkpoint: PathArg, lightning_checkpoint: PathArg, config: ConfigArg, device: str | torch.device,
            allow_pickle: bool = False, init_seed: int = 0) -> LoadedNetwork | None:
    """The VQ-GAN from our checkpoint, a Lightning VQ.ckpt / LINet.ckpt (first stage) or a config; else None."""
    dev = resolve_device(device)
    cfg = resolve_config(config, VQConfig)
    if checkpoint is not None:
        record = _file_record(checkpoint, "ld-augment")
        module, cfg, meta = load_checkpoint(checkpoint, device=dev)
        if not isinstance(cfg, VQConfig):
            raise CheckpointError(f"{checkpoint}: holds a {meta.get('network')} network, not the VQ-GAN")
    elif lightning_checkpoint is not None:
        record = _file_record(lightning_checkpoint, "lightning")
        module, cfg = load_lightning_checkpoint(lightning_checkpoint, "vq", config=cfg, allow_pickle=allow_pickle,
                                                device=dev)
    elif cfg is not None:
        module = _random(cfg, init_seed, dev)
        record = {"source": "random", "init_seed": int(init_seed)}
    else:
        return None
    record["config"] = cfg.to_dict()
    return LoadedNetwork(module, cfg, record)


def network_layout_of(requested: str | NetworkLayout | None, record: Mapping[str, Any]) -> NetworkLayout:
    """The array layout the network was trained in: as requested, else the loaded file's (SAL, the original
    loader's [S, A, L], for the released files; what our checkpoint recorded), else RAS (random weights)."""
    if requested is not None:
        return layout(requested)
    if record.get("source") == "lightning":
        return layout(RELEASED)
    return layout(record.get("layout") or "RAS", "recorded layout")


def is_released(record: Mapping[str, Any]) -> bool:
    """Whether the weights are the authors' released Lightning files (their inference is then the default)."""
    return record.get("source") == "lightning" or bool(record.get("released"))


def check_encoder_available(encoder: str | AttributeEncoder, weights: PathArg) -> None:
    """Fail early (before loading large checkpoints) when BiomedCLIP has no weights file."""
    if encoder == "biomedclip" and weights is None:
        raise MissingDependencyError(
            f"encoder='biomedclip' needs the BiomedCLIP weights file {WEIGHTS_FILE} ({HUB_NAME} on Hugging Face): "
            "pass encoder_weights=<path to the file or its folder>. Networks trained with the offline encoder "
            "take encoder='vocab' instead."
        )


def build_encoder(
    encoder: str | AttributeEncoder, *, weights: PathArg, context_dim: int | None, device: torch.device,
    recorded: Mapping[str, Any] | None = None,
) -> tuple[AttributeEncoder, dict[str, Any]]:
    """The text encoder whose output width must equal the UNet's ``context_dim``; returns it and its record.

    ``recorded`` is the checkpoint's ``extra["text_encoder"]`` ({"name", "id", "options"}) written by
    ld_augment.training: an offline encoder is rebuilt with those options so its vectors are the trained ones.
    """
    check_encoder_available(encoder, weights)
    record: dict[str, Any] = {"name": encoder if isinstance(encoder, str) else type(encoder).__name__}
    if isinstance(encoder, AttributeEncoder):
        enc = encoder
    elif encoder == "biomedclip":
        enc = create_encoder("biomedclip", weights=weights)
        record["weights_sha256"] = sha256_file(enc.weights_path)  # type: ignore[attr-defined]
    else:
        options: dict[str, Any] = {"output_dim": int(context_dim or 512)}
        if recorded and recorded.get("id") and recorded.get("options"):
            kept = {k: v for k, v in recorded["options"].items() if k in ("output_dim", "extra_phrases", "seed")}
            options.update(kept)
        enc = create_encoder(encoder, **options)
        if recorded and recorded.get("options", {}).get("vocab_fingerprint") not in (
                None, enc.options().get("vocab_fingerprint")):
            raise CheckpointError(f"the checkpoint's {encoder!r} text encoder was built from another vocabulary "
                                  "(fingerprint differs); use the ld-augment version it was trained with")
        if weights is not None:
            record.update(_load_encoder_weights(enc, weights))
    if context_dim is not None and enc.output_dim != context_dim:
        raise ConfigError(f"text encoder {record['name']!r} gives {enc.output_dim}-d vectors but the UNet's "
                          f"context_dim is {context_dim}")
    record["id"] = enc.encoder_id
    return enc.to(device).eval(), record


def text_encoder_for(net: LoadedNetwork, encoder: str | AttributeEncoder, *, weights: PathArg,
                     device: torch.device) -> tuple[AttributeEncoder | None, dict[str, Any]]:
    """The text encoder a loaded network's cross-attention needs (rebuilt as its checkpoint recorded), or
    (None, record) when the network ignores the text (skip_context, e.g. the released LINet)."""
    if not uses_text(net.cfg):
        return None, {"id": None, "note": "the network ignores the text (skip_context)"}
    return build_encoder(encoder, weights=weights, recorded=net.record.get("text_encoder"),
                         context_dim=net.cfg.context_dim, device=device)


def _load_encoder_weights(enc: AttributeEncoder, weights: PathArg) -> dict[str, Any]:
    """A trained offline encoder's state dict (its learned phrase vectors), saved beside the UNet."""
    raw = read_torch_file(weights)  # type: ignore[arg-type]
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{weights}: expected the encoder's state dict, got {type(raw).__name__}")
    try:
        enc.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights}: does not fit the {enc.encoder_id} encoder ({reason})") from None
    return {"weights": str(weights), "weights_sha256": sha256_file(weights)}  # type: ignore[arg-type]
