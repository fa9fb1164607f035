"""Engine registries: built-ins by name, lazy string factories, clear errors for unknown names and options."""

from __future__ import annotations

import numpy as np
import pytest

from ld_augment.engines import registry
from ld_augment.engines.base import MaskEngine
from ld_augment.engines.procedural import ProceduralMaskEngine, ProceduralTextureEngine
from ld_augment.errors import ConfigError


def test_builtin_procedural_engines() -> None:
    mask = registry.create_mask_engine("procedural", punctate_max_mm=8.0)
    texture = registry.create_texture_engine("procedural")
    assert isinstance(mask, ProceduralMaskEngine) and isinstance(texture, ProceduralTextureEngine)
    assert mask.provenance()["engine"] == "procedural" and mask.provenance()["options"]["punctate_max_mm"] == 8.0


def test_unknown_engine_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown mask engine 'nope'.*procedural"):
        registry.create_mask_engine("nope")
    with pytest.raises(ConfigError, match="texture engine"):
        registry.create_texture_engine("nope")


def test_bad_option_is_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_option"):
        registry.create_texture_engine("procedural", no_such_option=1)


class _Dummy(MaskEngine):
    name = "dummy"

    def generate_mask(self, ctx, bbox, report, rng):  # pragma: no cover - never called here
        return np.zeros(ctx.ct.shape, bool)


def test_register_callable_and_lazy_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MASK_ENGINES", dict(registry.MASK_ENGINES))
    registry.register_mask_engine("dummy", _Dummy)
    assert isinstance(registry.create_mask_engine("dummy"), _Dummy)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_mask_engine("dummy", _Dummy)
    registry.register_mask_engine("lazy", "ld_augment.engines.procedural.mask:ProceduralMaskEngine")
    assert isinstance(registry.create_mask_engine("lazy"), ProceduralMaskEngine)
    registry.register_mask_engine("wrong", "ld_augment.engines.procedural.texture:ProceduralTextureEngine")
    with pytest.raises(ConfigError, match="not a MaskEngine"):
        registry.create_mask_engine("wrong")
