"""Stage: engines (see DEVELOPERS.md). Mask and texture engines behind small interfaces, chosen by name."""

from ld_augment.engines.adherence import measure_adherence
from ld_augment.engines.base import LesionContext, MaskEngine, TextureEngine
from ld_augment.engines.registry import (
    MASK_ENGINES,
    TEXTURE_ENGINES,
    create_mask_engine,
    create_texture_engine,
    register_mask_engine,
    register_texture_engine,
)

__all__ = [
    "LesionContext",
    "MaskEngine",
    "TextureEngine",
    "MASK_ENGINES",
    "TEXTURE_ENGINES",
    "create_mask_engine",
    "create_texture_engine",
    "register_mask_engine",
    "register_texture_engine",
    "measure_adherence",
]
