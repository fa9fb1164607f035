"""Network configs: one frozen dataclass per network family, JSON-round-trippable, with the released presets.

The configs describe the ORIGINAL LesionDiffusion networks exactly (state-dict compatible), so a config can
also be built from the constructor kwargs the original code used (`from_original_kwargs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from ld_augment.errors import ConfigError

_C = TypeVar("_C", bound="_ConfigBase")


def _as_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    raise ConfigError(f"config field {name!r} must be a list of integers, got {value!r}")


class _ConfigBase:
    """Shared dict conversion: tuples become lists, unknown keys are rejected with the valid ones named."""

    _TUPLE_FIELDS: tuple[str, ...] = ()

    def _normalize_tuples(self) -> None:
        for name in self._TUPLE_FIELDS:  # lists from JSON or callers become hashable tuples
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(fields)}"
            )
        required = [
            n for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise ConfigError(f"{cls.__name__} is missing required key(s) {missing}")
        return cls(**dict(data))


def _check_unsupported(kwargs: Mapping[str, Any], supported: dict[str, Any], where: str) -> None:
    """Original kwargs we accept only at one value (features the released networks do not use)."""
    for key, allowed in supported.items():
        if key in kwargs and kwargs[key] != allowed:
            raise ConfigError(f"{where}: {key}={kwargs[key]!r} is not supported (only {allowed!r})")


@dataclass(frozen=True)
class UNetConfig(_ConfigBase):
    """The 3-D latent-diffusion UNet shared by LMNet and LINet (openaimodel.UNetModel with a spatial transformer).

    `skip_context=True` discards the text context (the released LINet test config); attn2 then attends to the
    image tokens, which needs the attention width to equal `context_dim`. `use_fp16` is recorded for fidelity:
    the forward pass always computes in the parameters' dtype, so `.half()` gives the original fp16 behaviour.
    `use_checkpoint` enables gradient checkpointing during training only (no numerical effect).
    """

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_head_channels: int = 32
    context_dim: int | None = None
    skip_context: bool = False
    use_fp16: bool = False
    transformer_depth: int = 1
    dropout: float = 0.0
    num_heads: int = -1
    use_checkpoint: bool = False

    _TUPLE_FIELDS = ("channel_mult", "attention_resolutions")

    def __post_init__(self) -> None:
        self._normalize_tuples()
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult:
            raise ConfigError("UNetConfig.channel_mult must not be empty")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ConfigError("UNetConfig needs num_head_channels > 0 or num_heads > 0")
        if self.context_dim is None and self.skip_context:
            raise ConfigError("UNetConfig.skip_context=True needs context_dim (attn2 keeps its context-sized k/v)")

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer at `channels` width, as the original chooses them."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ConfigError(
                    f"UNetConfig: width {channels} is not a multiple of num_head_channels {self.num_head_channels}"
                )
            heads = channels // self.num_head_channels
        else:
            heads = self.num_heads
        return heads, channels // heads

    @classmethod
    def from_original_kwargs(cls, kwargs: Mapping[str, Any]) -> "UNetConfig":
        """Build from `UNetModel(**kwargs)` kwargs (unet_config.params / reference config.json)."""
        kw = dict(kwargs)
        _check_unsupported(kw, {
            "dims": 3, "use_spatial_transformer": True, "conv_resample": True, "resblock_updown": False,
            "use_scale_shift_norm": False, "num_classes": None, "use_new_attention_order": False,
            "n_embed": None, "num_heads_upsample": -1,
        }, "UNetModel kwargs")
        ignored = {"image_size", "dims", "use_spatial_transformer", "conv_resample", "resblock_updown",
                   "use_scale_shift_norm", "num_classes", "use_new_attention_order", "n_embed",
                   "num_heads_upsample", "legacy"}
        mapping = {"transformer_depth": "transformer_depth", "dropout": "dropout", "num_heads": "num_heads"}
        known = {f.name for f in dataclasses.fields(cls)} | ignored | set(mapping)
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(f"unsupported UNetModel kwargs {unknown}; known: {sorted(known)}")
        data = {k: v for k, v in kw.items() if k not in ignored}
        data.setdefault("num_head_channels", -1)
        for key in ("use_fp16", "use_checkpoint", "skip_context"):
            data[key] = bool(data.get(key, False))
        return cls.from_dict(data)


@dataclass(frozen=True)
class VQConfig(_ConfigBase):
    """The 3-D VQ-GAN autoencoder (ae.VQModel with model.Encoder/Decoder, no attention).

    `sample_depth` lists the encoder levels followed by a stride-2 downsample; the decoder upsamples after
    level i when (num_res_blocks - i) is in sample_depth, as the original does.
    """

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    n_embed: int
    sample_depth: tuple[int, ...]
    in_channels: int = 1
    out_channels: int = 1
    beta: float = 0.25
    dropout: float = 0.0
    norm_groups: int = 16

    _TUPLE_FIELDS = ("ch_mult", "sample_depth")

    def __post_init__(self) -> None:
        self._normalize_tuples()
        for name in ("ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "in_channels", "out_channels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"VQConfig.{name} must be >= 1, got {getattr(self, name)}")
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"VQConfig: widths {widths} must be multiples of norm_groups={self.norm_groups}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** len([d for d in self.sample_depth if 0 <= d < len(self.ch_mult)])

    @classmethod
    def from_original_kwargs(cls, kwargs: Mapping[str, Any]) -> "VQConfig":
        """Build from `VQModel(**kwargs)` kwargs (with the nested `ddconfig`) or from a bare ddconfig."""
        kw = dict(kwargs)
        dd = dict(kw.get("ddconfig", kw))
        _check_unsupported(dd, {"double_z": False, "attn_resolutions": [], "attn_type": "none", "dims": 3},
                           "VQ ddconfig")
        _check_unsupported(kw, {"dims": 3, "is_conditional": False}, "VQModel kwargs")
        if "remap" in kw and kw["remap"] is not None:
            raise ConfigError("VQModel kwargs: remap is not supported")
        try:
            return cls(
                ch=int(dd["ch"]), ch_mult=_as_tuple(dd["ch_mult"], "ch_mult"),
                num_res_blocks=int(dd["num_res_blocks"]), z_channels=int(dd["z_channels"]),
                embed_dim=int(kw.get("embed_dim", dd["z_channels"])), n_embed=int(kw["n_embed"]),
                sample_depth=_as_tuple(dd.get("sample_depth", []), "sample_depth"),
                in_channels=int(dd.get("in_channels", 1)), out_channels=int(dd.get("out_ch", 1)),
                dropout=float(dd.get("dropout", 0.0)),
            )
        except KeyError as exc:
            raise ConfigError(f"VQ kwargs lack {exc.args[0]!r} (need ddconfig.ch/ch_mult/num_res_blocks/"
                              "z_channels and n_embed)") from None


LMNET_RELEASED = UNetConfig(
    in_channels=4, out_channels=1, model_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
    attention_resolutions=(4,), num_head_channels=32, context_dim=512,
)
"""LMNet (maskdiffusion_test.yaml): 2,527,489 parameters, cross-attention over 512-d attribute embeddings."""

LINET_RELEASED = UNetConfig(
    in_channels=5, out_channels=5, model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2,
    attention_resolutions=(4, 8), num_head_channels=32, context_dim=512, skip_context=True, use_fp16=True,
)
"""LINet as released for inference (lesiondiffusion_test.yaml): skip_context=True, the text is ignored."""

LINET_RELEASED_TRAIN = dataclasses.replace(
    LINET_RELEASED, attention_resolutions=(4,), skip_context=False, use_fp16=False,
)
"""LINet as trained (lesiondiffusion.yaml): same weights layout, cross-attention on the text context."""

VQ_RELEASED = VQConfig(
    ch=96, ch_mult=(1, 1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, n_embed=2048, sample_depth=(0,),
)
"""VQ-GAN (lesiondiffusion_vq.yaml): 7,009,709 parameters, factor 2 per axis, 2048 codes of dim 4."""

LMNET_TINY = UNetConfig(
    in_channels=4, out_channels=1, model_channels=8, channel_mult=(1, 4), num_res_blocks=1,
    attention_resolutions=(2,), num_head_channels=16, context_dim=64,
)
LINET_TINY = UNetConfig(
    in_channels=5, out_channels=5, model_channels=8, channel_mult=(1, 4), num_res_blocks=1,
    attention_resolutions=(2, 4), num_head_channels=16, context_dim=32, skip_context=True,
)
VQ_TINY = VQConfig(ch=16, ch_mult=(1, 1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, n_embed=64,
                   sample_depth=(0,))
"""Tiny sizes mirroring reference/tiny, for tests and quick experiments."""

PRESETS: dict[str, UNetConfig | VQConfig] = {
    "lmnet": LMNET_RELEASED, "linet": LINET_RELEASED, "linet_train": LINET_RELEASED_TRAIN, "vq": VQ_RELEASED,
    "lmnet_tiny": LMNET_TINY, "linet_tiny": LINET_TINY, "vq_tiny": VQ_TINY,
}


def config_from_dict(data: Mapping[str, Any]) -> UNetConfig | VQConfig:
    """Pick the config class from the keys (UNet configs have `model_channels`, VQ configs `n_embed`)."""
    if "model_channels" in data:
        return UNetConfig.from_dict(data)
    if "n_embed" in data:
        return VQConfig.from_dict(data)
    raise ConfigError(f"cannot tell the network from config keys {sorted(data)} (need model_channels or n_embed)")
