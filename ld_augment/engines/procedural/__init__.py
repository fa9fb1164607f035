"""The embedded, weight-free procedural engine (mask + texture): the default and the benchmark baseline."""

from ld_augment.engines.procedural.mask import ProceduralMaskEngine
from ld_augment.engines.procedural.texture import ProceduralTextureEngine

__all__ = ["ProceduralMaskEngine", "ProceduralTextureEngine"]
