"""Map the state dict of an original LesionDiffusion Lightning module onto our networks' keys.

Layout (reference/checkpoint_layout.md): the UNet sits under `model.` (MaskDiffusion/InpaintingDiffusion unwrap
the DiffusionWrapper; plain LDM classes use `model.diffusion_model.`); EMA copies are `model_ema.` + the parameter
name with its dots deleted, and are what the original sampled with; LINet also holds its VQ first stage under
`first_stage_model.`; a VQ.ckpt holds the VQ at the top level next to its training loss (`loss.*`).
Everything outside the chosen network is accounted for explicitly: a key we do not recognise is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ld_augment.errors import CheckpointError

KINDS = ("lmnet", "linet", "vq")
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "scale_factor",
})
EMA_PREFIX = "model_ema."
EMA_META = frozenset({"model_ema.decay", "model_ema.num_updates"})
UNET_PREFIXES = ("model.diffusion_model.", "model.")
VQ_PREFIX_IN_LINET = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."


@dataclass
class ExtractedState:
    """The network's state dict plus where each entry came from (network key -> checkpoint key)."""

    state: dict[str, torch.Tensor]
    mapping: dict[str, str]
    weights: str  # "ema", "model" or "bare"
    prefix: str
    ignored: list[str] = field(default_factory=list)


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def guess_kind(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Best guess of which network a state dict holds (for error hints only)."""
    for prefix in (*UNET_PREFIXES, ""):
        w = sd.get(prefix + "input_blocks.0.0.weight")
        if isinstance(w, torch.Tensor) and w.ndim == 5:
            return {4: "lmnet", 5: "linet"}.get(int(w.shape[1]), "unet")
    if any(k.startswith("encoder.") for k in sd) or any(k.startswith(VQ_PREFIX_IN_LINET) for k in sd):
        return "vq"
    return None


def kind_hint(sd: Mapping[str, torch.Tensor], kind: str) -> str:
    guess = guess_kind(sd)
    if guess and guess != kind:
        return f" The file looks like a {guess!r} checkpoint; pass kind={guess!r}." if guess in KINDS else ""
    return ""


def _unet_prefix(sd: Mapping[str, torch.Tensor]) -> str | None:
    for prefix in UNET_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return prefix
    return "" if "time_embed.0.weight" in sd else None


def extract_unet_state(sd: Mapping[str, torch.Tensor], module: nn.Module, kind: str, *, use_ema: bool,
                       source: str) -> ExtractedState:
    """UNet weights from a Lightning (or bare) state dict; EMA copies win when present and `use_ema`."""
    prefix = _unet_prefix(sd)
    if prefix is None:
        raise CheckpointError(
            f"{source}: no UNet weights found for kind={kind!r} (expected keys starting with 'model.' or a bare "
            f"UNet state dict; first keys: {_preview(list(sd), 5)}).{kind_hint(sd, kind)}"
        )
    ema = {k[len(EMA_PREFIX):]: k for k in sd if k.startswith(EMA_PREFIX) and k not in EMA_META}
    model_keys = [k for k in sd if k.startswith(prefix)] if prefix else [
        k for k in sd if k not in SCHEDULE_BUFFERS and not k.startswith((EMA_PREFIX, TEXT_PREFIX, VQ_PREFIX_IN_LINET))
    ]
    mapping: dict[str, str] = {}
    if use_ema and ema:
        weights = "ema"
        param_names = [n for n, p in module.named_parameters() if p.requires_grad]
        # plain LDM classes build the EMA on the DiffusionWrapper, so their names keep "diffusion_model"
        lead = "diffusion_model" if prefix == "model.diffusion_model." else ""
        squashed = {lead + n.replace(".", ""): n for n in param_names}
        if len(squashed) != len(param_names):
            raise CheckpointError(f"{source}: EMA names are ambiguous for this network (dot-free names collide)")
        unknown = sorted(set(ema) - set(squashed))
        missing = [n for s, n in squashed.items() if s not in ema]
        if unknown or missing:
            raise CheckpointError(
                f"{source}: EMA weights do not match the {kind} network: "
                + (f"{len(missing)} parameter(s) without an EMA copy ({_preview(missing)}); " if missing else "")
                + (f"{len(unknown)} unexpected EMA entr(y/ies) ({_preview(unknown)})" if unknown else "")
                + f". Pass use_ema=False to load the raw '{prefix}' weights.{kind_hint(sd, kind)}"
            )
        mapping = {n: EMA_PREFIX + s for s, n in squashed.items()}
        buffer_names = [n for n, _ in module.named_buffers()]
        mapping.update({n: prefix + n for n in buffer_names if prefix + n in sd})
    else:
        weights = "model" if prefix else "bare"
        mapping = {k[len(prefix):]: k for k in model_keys}
    used = set(mapping.values())
    ignorable = set(model_keys) | set(ema.values()) | EMA_META | SCHEDULE_BUFFERS
    leftovers = [k for k in sd if k not in used and k not in ignorable
                 and not k.startswith((TEXT_PREFIX, VQ_PREFIX_IN_LINET))]
    if leftovers:
        raise CheckpointError(
            f"{source}: {len(leftovers)} unexpected key(s) for a {kind} checkpoint: {_preview(leftovers)}."
            f"{kind_hint(sd, kind)}"
        )
    ignored = [k for k in sd if k not in used]
    return ExtractedState({n: sd[k] for n, k in mapping.items()}, mapping, weights, prefix, ignored)


def extract_vq_state(sd: Mapping[str, torch.Tensor], *, source: str) -> ExtractedState:
    """VQ weights from VQ.ckpt (top level, `loss.*` dropped) or from LINet.ckpt (`first_stage_model.*`)."""
    if any(k.startswith(VQ_PREFIX_IN_LINET) for k in sd):
        prefix = VQ_PREFIX_IN_LINET
        mapping = {k[len(prefix):]: k for k in sd if k.startswith(prefix)}
        # Everything else in a LINet checkpoint (UNet, EMA, schedule, text tower) is legitimately not ours.
    elif "encoder.conv_in.weight" in sd or "quantize.embedding.weight" in sd:
        prefix = ""
        mapping = {k: k for k in sd if not k.startswith("loss.")}
    else:
        raise CheckpointError(
            f"{source}: no VQ weights found (expected 'encoder.*'/'decoder.*'/'quantize.*' keys, or "
            f"'first_stage_model.*' inside a LINet checkpoint; first keys: {_preview(list(sd), 5)})."
            f"{kind_hint(sd, 'vq')}"
        )
    used = set(mapping.values())
    return ExtractedState({n: sd[k] for n, k in mapping.items()}, mapping, "model", prefix,
                          [k for k in sd if k not in used])


def check_state_matches(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str, source: str,
                        hint: str = "", names: Mapping[str, str] | None = None) -> None:
    """Raise one readable CheckpointError listing missing keys, unexpected keys and shape mismatches.

    `names` maps network keys to the checkpoint's own key names, which are shown for unexpected entries.
    """
    names = names or {}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [names.get(k, k) for k in state if k not in expected]
    mismatched = [
        f"{names.get(k, k)}: checkpoint {list(state[k].shape)} vs network {list(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_preview(mismatched, 5)}")
    raise CheckpointError(
        f"{source}: the weights do not fit the {what} network ({'; '.join(parts)}). "
        "Check `kind` and `config` (the config must describe the network the checkpoint was trained with)."
        + hint
    )
