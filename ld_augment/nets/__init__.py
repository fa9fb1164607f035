"""Stage: nets — the LesionDiffusion networks (UNet3D for LMNet/LINet, VQModel3D), configs, checkpoints.

Never imports `ld_augment.diffusion` (samplers live there; engines/ combine both).
"""

from ld_augment.nets.attention import ATTENTION_BACKENDS, set_attention_backend
from ld_augment.nets.checkpoints import (
    build_network,
    convert_lightning_checkpoint,
    load_checkpoint,
    load_lightning_checkpoint,
    load_lightning_state_dict,
    save_checkpoint,
)
from ld_augment.nets.config import (
    LINET_RELEASED,
    LINET_RELEASED_TRAIN,
    LINET_TINY,
    LMNET_RELEASED,
    LMNET_TINY,
    PRESETS,
    VQ_RELEASED,
    VQ_TINY,
    UNetConfig,
    VQConfig,
    config_from_dict,
)
from ld_augment.nets.precision import (
    COMPILE_MODES,
    PRECISIONS,
    autocast_context,
    check_precision,
    maybe_compile,
    precision_dtype,
    resolve_device,
    resolve_precision,
)
from ld_augment.nets.unet import UNet3D
from ld_augment.nets.vq import VQModel3D

__all__ = [
    "ATTENTION_BACKENDS", "COMPILE_MODES", "PRECISIONS", "check_precision", "maybe_compile", "resolve_precision",
    "set_attention_backend",
    "LINET_RELEASED", "LINET_RELEASED_TRAIN", "LINET_TINY", "LMNET_RELEASED", "LMNET_TINY", "PRESETS",
    "VQ_RELEASED", "VQ_TINY", "UNet3D", "UNetConfig", "VQConfig", "VQModel3D", "autocast_context",
    "build_network", "config_from_dict", "convert_lightning_checkpoint", "load_checkpoint",
    "load_lightning_checkpoint", "load_lightning_state_dict", "precision_dtype", "resolve_device",
    "save_checkpoint",
]
