"""The paper's diffusion engines: LMNet draws the lesion mask, LINet (+ VQ-GAN) paints it into the CT.

Registered by name ("diffusion") in ``ld_augment.engines.registry`` as lazy strings, so listing engines never
imports torch. This is the only place the networks (``nets``) meet the samplers (``diffusion``).
"""

from ld_augment.engines.diffusion.intensity import denormalize_ct, normalize_ct
from ld_augment.engines.diffusion.mask import DiffusionMaskEngine
from ld_augment.engines.diffusion.texture import DiffusionTextureEngine

__all__ = ["DiffusionMaskEngine", "DiffusionTextureEngine", "denormalize_ct", "normalize_ct"]
