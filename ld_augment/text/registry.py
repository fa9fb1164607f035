"""Text encoders by name: a table of import paths, read lazily.

A table rather than decorators in the encoder modules, so that nothing has to import every encoder to learn
their names (open_clip alone takes seconds to import) and no module imports another to register itself.
Each entry: registry name -> ("module:callable", encoder_id). ``encoder_id`` is what checkpoints record;
tests/text check that it equals the module's ``ENCODER_ID``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from ld_augment.errors import ConfigError

ENCODERS: dict[str, tuple[str, str]] = {
    "vocab": ("ld_augment.text.offline:build_vocab_encoder", "ld-vocab-embedding-v1"),
    "biomedclip": ("ld_augment.text.biomedclip:BiomedCLIPEncoder", "biomedclip-pubmedbert-256"),
}
ENCODER_IDS: dict[str, str] = {encoder_id: name for name, (_, encoder_id) in ENCODERS.items()}


def available_encoders() -> tuple[str, ...]:
    return tuple(sorted(ENCODERS))


def encoder_factory(name: str) -> Callable[..., Any]:
    """The constructor for a registry name or a recorded ``encoder_id`` (imported on first use)."""
    key = ENCODER_IDS.get(name, name)
    if key not in ENCODERS:
        raise ConfigError(
            f"unknown text encoder {name!r}; valid: {', '.join(sorted(ENCODERS))} "
            f"(or an encoder id: {', '.join(sorted(ENCODER_IDS))})"
        )
    module, _, attr = ENCODERS[key][0].partition(":")
    return getattr(import_module(module), attr)


def create_encoder(name: str, **options: Any) -> Any:
    """Build an encoder by registry name ("vocab", "biomedclip") or by a recorded ``encoder_id``."""
    return encoder_factory(name)(**options)
