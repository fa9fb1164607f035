"""Engines by name, so the CLI's ``--mask-engine``/``--texture-engine`` choices come from one place.

A registry value is either a factory (callable returning an engine) or a ``"module:attribute"`` string that
is imported only when that engine is created; the diffusion engine registers that way, so listing the
choices never imports torch or loads weights.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Union

from ld_augment.engines.base import MaskEngine, TextureEngine
from ld_augment.errors import ConfigError

Factory = Union[Callable[..., Any], str]

MASK_ENGINES: dict[str, Factory] = {
    "procedural": "ld_augment.engines.procedural.mask:ProceduralMaskEngine",
    "diffusion": "ld_augment.engines.diffusion.mask:DiffusionMaskEngine",
}
TEXTURE_ENGINES: dict[str, Factory] = {
    "procedural": "ld_augment.engines.procedural.texture:ProceduralTextureEngine",
    "diffusion": "ld_augment.engines.diffusion.texture:DiffusionTextureEngine",
}


def register_mask_engine(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Add a mask engine; re-registering a name needs ``replace=True`` so typos don't shadow built-ins."""
    _register(MASK_ENGINES, "mask", name, factory, replace)


def register_texture_engine(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Add a texture engine; re-registering a name needs ``replace=True``."""
    _register(TEXTURE_ENGINES, "texture", name, factory, replace)


def create_mask_engine(name: str, **options: Any) -> MaskEngine:
    """Build the mask engine registered as ``name`` with keyword ``options``."""
    return _create(MASK_ENGINES, "mask", name, MaskEngine, options)


def create_texture_engine(name: str, **options: Any) -> TextureEngine:
    """Build the texture engine registered as ``name`` with keyword ``options``."""
    return _create(TEXTURE_ENGINES, "texture", name, TextureEngine, options)


def engine_parameters(kind: str, name: str) -> dict[str, inspect.Parameter]:
    """The keyword options engine ``name`` of ``kind`` ("mask"/"texture") accepts, by name, with their defaults.

    Lets a recipe's options be checked when it loads (names and value types), hours before engines are built;
    imports the engine's module, not its weights.
    """
    table = {"mask": MASK_ENGINES, "texture": TEXTURE_ENGINES}[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} engine {name!r}; choices: {sorted(table)}")
    params = inspect.signature(_resolve(table[name])).parameters
    return {p.name: p for p in params.values() if p.kind != p.VAR_POSITIONAL}  # a **kwargs entry: anything goes


def _register(table: dict[str, Factory], kind: str, name: str, factory: Factory, replace: bool) -> None:
    if name in table and not replace:
        raise ConfigError(f"{kind} engine {name!r} is already registered (pass replace=True to override)")
    table[name] = factory


def _resolve(factory: Factory) -> Callable[..., Any]:
    if callable(factory):
        return factory
    module_name, _, attribute = factory.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _create(table: dict[str, Factory], kind: str, name: str, base: type, options: dict[str, Any]) -> Any:
    if name not in table:
        raise ConfigError(f"unknown {kind} engine {name!r}; choices: {sorted(table)}")
    factory = _resolve(table[name])
    try:  # wrong option names are a user's configuration problem, reported before anything is built
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options)} for {kind} engine {name!r}: {exc}") from exc
    engine = factory(**options)
    if not isinstance(engine, base):
        raise ConfigError(f"{kind} engine {name!r} built a {type(engine).__name__}, not a {base.__name__}")
    return engine
