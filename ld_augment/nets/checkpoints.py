"""Loading the released Lightning checkpoints, and our own small checkpoint format.

Our format is one `torch.save` file holding plain data only (loadable with `weights_only=True`):
{"format": "ld-augment-net/1", "network": "unet"|"vq", "config": cfg.to_dict(), "encoder_id": str|None,
 "state_dict": {...}, "extra": JSON-like dict, "torch_version": str}. The encoder id records which text
encoder produced the training context, so a model is never silently paired with another encoder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ld_augment.errors import CheckpointError, ConfigError
from ld_augment.settings import MAX_MEMORY_ENV, memory_limit_bytes
from ld_augment.io.network_layout import RELEASED as RELEASED_LAYOUT
from ld_augment.io.atomic import atomic_path
from ld_augment.nets.config import LINET_RELEASED, LMNET_RELEASED, VQ_RELEASED, UNetConfig, VQConfig, config_from_dict
from ld_augment.nets.lightning import (
    KINDS, ExtractedState, check_state_matches, extract_unet_state, extract_vq_state, kind_hint,
)
from ld_augment.nets.precision import resolve_device
from ld_augment.nets.unet import UNet3D
from ld_augment.nets.vq import VQModel3D

FORMAT = "ld-augment-net/1"
DEFAULT_CONFIGS: dict[str, UNetConfig | VQConfig] = {"lmnet": LMNET_RELEASED, "linet": LINET_RELEASED, "vq": VQ_RELEASED}
log = logging.getLogger(__name__)

Network = UNet3D | VQModel3D


def build_network(cfg: UNetConfig | VQConfig, device: str | torch.device | None = None) -> Network:
    """A freshly initialised network for `cfg` (use device='meta' for a weight-less skeleton)."""
    if isinstance(cfg, UNetConfig):
        cls: type[nn.Module] = UNet3D
    elif isinstance(cfg, VQConfig):
        cls = VQModel3D
    else:
        raise ConfigError(f"expected a UNetConfig or VQConfig, got {type(cfg).__name__}")
    with torch.device(resolve_device(device)):
        return cls(cfg)  # type: ignore[return-value]


def _fill(cfg: UNetConfig | VQConfig, state: Mapping[str, torch.Tensor], *, what: str, source: str,
          device: str | torch.device | None) -> Network:
    """Build on the meta device, check keys/shapes, then adopt the tensors (no random init, no second copy)."""
    module = build_network(cfg, "meta")
    check_state_matches(module, state, what=what, source=source)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    if device is not None:
        module.to(resolve_device(device))
    return module.eval()


def _first_reason(exc: Exception) -> str:
    """The informative line of torch's long weights_only message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
    reason = (lines[0] if lines else (str(exc).splitlines() or [""])[0]).removeprefix("WeightsUnpickler error: ")
    return reason.split(". ")[0] or type(exc).__name__


def read_torch_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """torch.load with weights_only=True (mmap when possible); pickled objects only when allowed."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            _check_loadable_size(p)  # a legacy (non-zip) file is read whole, not mapped
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # a torn/foreign file, not a refused Python object
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated, corrupt or another format)") from None
        if not allow_pickle:
            raise CheckpointError(
                f"{p}: the file holds pickled Python objects besides tensors, which weights_only=True refuses "
                f"({_first_reason(exc)}). Lightning checkpoints can carry hyper-parameters this way. If the "
                "file comes from a source you trust, pass --allow-pickle on the command line (allow_pickle=True "
                "in Python; this runs code stored in the file), or re-save only its 'state_dict'."
            ) from None
        warnings.warn(f"{p}: loading with weights_only=False (allow_pickle=True)", stacklevel=3)
        _check_loadable_size(p)
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc2:
            raise CheckpointError(f"{p}: unpickling needs code that is not installed ({exc2})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({exc})") from None


def _check_loadable_size(path: Path) -> None:
    """A checkpoint read whole (not memory-mapped) must fit the memory budget ($LD_AUGMENT_MAX_MEMORY_GB)."""
    size, limit = path.stat().st_size, memory_limit_bytes()
    if size > limit:
        raise CheckpointError(f"{path}: {size / 2**30:.1f} GB to read into memory, over the limit of "
                              f"{limit / 2**30:.1f} GB ({MAX_MEMORY_ENV}); re-save it with torch.save (a zip "
                              "checkpoint is memory-mapped instead)")


def _state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{source}: expected a dict with a 'state_dict' (or a state dict), got {type(obj).__name__}")
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: the checkpoint holds no tensors")
    return tensors


def extract_lightning_state(sd: Mapping[str, torch.Tensor], kind: str, *, use_ema: bool = True,
                            config: UNetConfig | VQConfig | None = None, source: str = "<state dict>"
                            ) -> tuple[ExtractedState, UNetConfig | VQConfig]:
    """The network part of a Lightning state dict (renamed to our keys) and the config to build it with."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; valid kinds: {list(KINDS)}")
    cfg = config if config is not None else DEFAULT_CONFIGS[kind]
    wanted = VQConfig if kind == "vq" else UNetConfig
    if not isinstance(cfg, wanted):
        raise ConfigError(f"kind={kind!r} needs a {wanted.__name__}, got {type(cfg).__name__}")
    skeleton = build_network(cfg, "meta")
    if kind == "vq":
        extracted = extract_vq_state(sd, source=source)
    else:
        extracted = extract_unet_state(sd, skeleton, kind, use_ema=use_ema, source=source)
    check_state_matches(skeleton, extracted.state, what=kind, source=source, hint=kind_hint(sd, kind),
                        names=extracted.mapping)
    return extracted, cfg


def load_lightning_state_dict(sd: Mapping[str, torch.Tensor], kind: str, *, use_ema: bool = True,
                              config: UNetConfig | VQConfig | None = None, source: str = "<state dict>",
                              device: str | torch.device | None = None) -> tuple[Network, UNetConfig | VQConfig]:
    """In-memory version of `load_lightning_checkpoint` (e.g. for an already loaded `ckpt["state_dict"]`)."""
    extracted, cfg = extract_lightning_state(sd, kind, use_ema=use_ema, config=config, source=source)
    module = _fill(cfg, extracted.state, what=kind, source=source, device=device)
    log.info("%s: loaded %s weights (%s, %d tensors)", source, kind, extracted.weights, len(extracted.state))
    return module, cfg


def load_lightning_checkpoint(path: str | os.PathLike, kind: str, *, use_ema: bool = True,
                              config: UNetConfig | VQConfig | None = None, allow_pickle: bool = False,
                              device: str | torch.device | None = None) -> tuple[Network, UNetConfig | VQConfig]:
    """Load LMNet.ckpt / LINet.ckpt / VQ.ckpt of the original release -> (module in eval mode, config).

    kind: "lmnet", "linet" or "vq". `config` defaults to the released preset of that kind; for "linet" this is
    LINET_RELEASED, which sets skip_context=True as the released test config does (the text context is
    ignored at inference); pass LINET_RELEASED_TRAIN to use the cross-attention as trained. EMA weights
    (`model_ema.*`, what the original sampled with) are preferred when present; `use_ema=False` takes `model.*`.
    kind="vq" on a LINet checkpoint extracts its VQ first stage (`first_stage_model.*`).
    Weights are converted to float32; any missing/unexpected key or shape mismatch raises CheckpointError.
    """
    raw = read_torch_file(path, allow_pickle=allow_pickle)
    return load_lightning_state_dict(_state_dict_of(raw, str(path)), kind, use_ema=use_ema, config=config,
                                     source=str(path), device=device)


def _plain(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON-serialisable plain data ({exc})") from None


def save_checkpoint(path: str | os.PathLike, module: nn.Module, cfg: UNetConfig | VQConfig, *,
                    encoder_id: str | None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write our checkpoint (weights + config + text-encoder id) atomically; returns the path.

    encoder_id names the text encoder whose embeddings the UNet was trained on (e.g. "biomedclip");
    use None for the VQ, which takes no text.
    """
    if getattr(module, "cfg", cfg) != cfg:
        raise ConfigError("save_checkpoint: `cfg` differs from the module's own config")
    if isinstance(cfg, UNetConfig) and not encoder_id:
        raise ConfigError("save_checkpoint: a UNet checkpoint needs encoder_id (the text encoder it was trained with)")
    state = {k: v.detach().to("cpu") for k, v in module.state_dict().items()}
    if any(v.is_meta for v in state.values()):
        raise CheckpointError("save_checkpoint: the module has no weights (meta tensors)")
    payload = {
        "format": FORMAT, "network": "unet" if isinstance(cfg, UNetConfig) else "vq", "config": cfg.to_dict(),
        "encoder_id": encoder_id, "extra": _plain(dict(extra or {}), "extra"), "torch_version": str(torch.__version__),
        "state_dict": state,
    }
    return atomic_torch_save(payload, path, what="checkpoint")


#: Below this much free space, a failed write is read as a full disk (torch's C++ writer drops the errno).
_NEARLY_FULL_BYTES = 64 << 20


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, what: str = "checkpoint") -> Path:
    """torch.save through a temporary file and a rename, so a failed write leaves the previous file intact.

    A failed write (a full disk, a quota) is one OSError naming `path`: torch's zip writer reports it as a
    RuntimeError from inline_container.cc without errno or file, and its cleanup raises a second one.
    """
    path = Path(path)
    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise _write_failure(path, what, exc.errno) from None
    except RuntimeError as exc:
        if "write" not in str(exc).lower():
            raise
        raise _write_failure(path, what, None) from None
    return path


def _write_failure(path: Path, what: str, code: int | None) -> OSError:
    if code is None:
        try:
            code = errno.ENOSPC if shutil.disk_usage(path.parent).free < _NEARLY_FULL_BYTES else errno.EIO
        except OSError:
            code = errno.EIO
    reason = os.strerror(code)
    kept = "the previous one is unchanged" if path.exists() else "nothing was written"
    return OSError(code, f"cannot write the {what}: {reason} ({kept})", str(path))


def load_checkpoint(path: str | os.PathLike, *, expected_encoder_id: str | None = None,
                    device: str | torch.device | None = None) -> tuple[Network, UNetConfig | VQConfig, dict[str, Any]]:
    """Load our checkpoint -> (module in eval mode, config, meta {format, network, encoder_id, extra, ...}).

    With `expected_encoder_id`, a UNet trained with another text encoder is a CheckpointError.
    """
    raw = read_torch_file(path)
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        hint = (" It looks like an original Lightning checkpoint: use load_lightning_checkpoint(path, kind) or "
                "convert_lightning_checkpoint." if isinstance(raw, Mapping) and "state_dict" in raw else "")
        raise CheckpointError(f"{path}: not an ld-augment network checkpoint (format {FORMAT!r} expected).{hint}")
    try:
        cfg = config_from_dict(raw["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid stored config: {exc}") from None
    stored = raw.get("encoder_id")
    if expected_encoder_id is not None and isinstance(cfg, UNetConfig) and stored != expected_encoder_id:
        raise CheckpointError(
            f"{path}: the network was trained with text encoder {stored!r} but {expected_encoder_id!r} is "
            "configured; use the same encoder (its embeddings differ) or retrain"
        )
    module = _fill(cfg, _state_dict_of(raw, str(path)), what=raw.get("network", "?"), source=str(path), device=device)
    meta = {k: raw.get(k) for k in ("format", "network", "encoder_id", "extra", "torch_version")}
    meta["path"] = str(path)
    return module, cfg, meta


def convert_lightning_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, kind: str,
                                 encoder_id: str | None = "biomedclip", *, use_ema: bool = True,
                                 config: UNetConfig | VQConfig | None = None, allow_pickle: bool = False) -> Path:
    """Convert an original Lightning checkpoint to our format (for kind="vq" the encoder id is dropped)."""
    raw = read_torch_file(src, allow_pickle=allow_pickle)
    sd = _state_dict_of(raw, str(src))
    extracted, cfg = extract_lightning_state(sd, kind, use_ema=use_ema, config=config, source=str(src))
    module = _fill(cfg, extracted.state, what=kind, source=str(src), device=None)
    # the released networks saw [S, A, L] arrays (ld_augment.io.network_layout); "released" keeps the
    # original's inference the default for the converted file too
    extra = {"kind": kind, "source": Path(src).name, "weights": extracted.weights, "prefix": extracted.prefix,
             "layout": RELEASED_LAYOUT, "released": True}
    return save_checkpoint(dst, module, cfg, encoder_id=None if kind == "vq" else encoder_id, extra=extra)
