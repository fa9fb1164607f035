"""Configs: dict round trip, strict keys, construction from the original constructor kwargs."""

from __future__ import annotations

import dataclasses

import pytest

from ld_augment.errors import ConfigError
from ld_augment.nets import (
    LINET_RELEASED, LINET_RELEASED_TRAIN, LMNET_RELEASED, PRESETS, VQ_RELEASED, UNetConfig, VQConfig,
    config_from_dict,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_dict(name: str) -> None:
    cfg = PRESETS[name]
    data = cfg.to_dict()
    assert all(not isinstance(v, tuple) for v in data.values())  # JSON-friendly
    assert type(cfg).from_dict(data) == cfg
    assert config_from_dict(data) == cfg


def test_unknown_key_names_the_valid_ones() -> None:
    data = {**LMNET_RELEASED.to_dict(), "num_res_blockz": 2}
    with pytest.raises(ConfigError, match="num_res_blockz") as info:
        UNetConfig.from_dict(data)
    assert "num_res_blocks" in str(info.value)
    with pytest.raises(ConfigError, match="n_embedz"):
        VQConfig.from_dict({**VQ_RELEASED.to_dict(), "n_embedz": 1})


def test_missing_key_and_bad_values_are_config_errors() -> None:
    data = LMNET_RELEASED.to_dict()
    del data["model_channels"]
    with pytest.raises(ConfigError, match="model_channels"):
        UNetConfig.from_dict(data)
    with pytest.raises(ConfigError, match="skip_context"):
        dataclasses.replace(LMNET_RELEASED, context_dim=None, skip_context=True)
    with pytest.raises(ConfigError, match="norm_groups"):
        dataclasses.replace(VQ_RELEASED, ch=20)
    with pytest.raises(ConfigError, match="cannot tell"):
        config_from_dict({"foo": 1})


def test_lists_become_tuples() -> None:
    cfg = dataclasses.replace(LMNET_RELEASED, channel_mult=[1, 2, 4])  # type: ignore[arg-type]
    assert cfg.channel_mult == (1, 2, 4) and hash(cfg) == hash(LMNET_RELEASED)


@pytest.mark.parametrize(("layout", "preset"), [
    ("lmnet_unet_test", LMNET_RELEASED),
    ("lmnet_unet_train", LMNET_RELEASED),
    ("linet_unet_test", LINET_RELEASED),
    ("linet_unet_train", LINET_RELEASED_TRAIN),
])
def test_released_unet_kwargs_give_the_presets(load_layout, layout: str, preset: UNetConfig) -> None:
    cfg = UNetConfig.from_original_kwargs(load_layout(layout)["constructor_kwargs"])
    assert dataclasses.replace(cfg, use_checkpoint=False) == preset


def test_released_vq_kwargs_give_the_preset(load_layout) -> None:
    assert VQConfig.from_original_kwargs(load_layout("vq_model")["constructor_kwargs"]) == VQ_RELEASED
    assert VQ_RELEASED.downsampling_factor == 2


def test_unsupported_original_options_are_rejected() -> None:
    kwargs = {"in_channels": 4, "out_channels": 1, "model_channels": 8, "channel_mult": [1, 2],
              "num_res_blocks": 1, "attention_resolutions": [2], "num_head_channels": 8, "context_dim": 16}
    assert UNetConfig.from_original_kwargs(kwargs).num_head_channels == 8
    with pytest.raises(ConfigError, match="use_scale_shift_norm"):
        UNetConfig.from_original_kwargs({**kwargs, "use_scale_shift_norm": True})
    with pytest.raises(ConfigError, match="mystery"):
        UNetConfig.from_original_kwargs({**kwargs, "mystery": 1})
    dd = {"ch": 16, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 4, "attn_type": "vanilla"}
    with pytest.raises(ConfigError, match="attn_type"):
        VQConfig.from_original_kwargs({"ddconfig": dd, "n_embed": 8})
