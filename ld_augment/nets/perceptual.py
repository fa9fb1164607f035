"""LPIPS(VGG16) for the VQ-GAN's perceptual term, from local files only (nothing is downloaded).

The `lpips` package ships its learned linear layers (v0.1 vgg.pth); the VGG16 ImageNet backbone it normally
fetches through torchvision must come from the user's own copy of torchvision's `vgg16-397923af.pth`
(a state dict with `features.N.*` keys). Tests build the backbone with random weights instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ld_augment.errors import ConfigError, InputError, MissingDependencyError

VGG_FILE_HELP = ("torchvision's ImageNet VGG16 weights (vgg16-397923af.pth, a state dict with features.N.weight "
                 "keys; torchvision.models.VGG16_Weights.IMAGENET1K_V1 on a machine with internet access)")
# lpips' VGG16 wrapper cuts torchvision's `features` into five slices at these indices (conv1_2 .. conv5_3 relus)
SLICES = ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30)))


def _backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """torchvision VGG16 keys features.N.* -> lpips' slice{k}.N.*; anything else in the file is ignored."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(f"{path}: not a readable torch weights file ({exc}); expected {VGG_FILE_HELP}") from None
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for k, idx in SLICES:
        for i in idx:
            for name in ("weight", "bias"):
                key = f"features.{i}.{name}"
                if key in raw:
                    out[f"slice{k}.{i}.{name}"] = raw[key]
    if len(out) != 26:  # 13 convs x (weight, bias)
        raise InputError(f"{path}: found {len(out) // 2} of VGG16's 13 feature convolutions; expected {VGG_FILE_HELP}")
    return out


INPUT_RANGES = ("unit", "symmetric")


class PerceptualLoss(nn.Module):
    """LPIPS distance of [B, 1, H, W] images in [0, 1] (gray to RGB), per sample.

    backbone_weights: the VGG16 file; random_backbone=True (tests only) skips it. linear_weights: another
    lpips linear-layer file (default: the package's v0.1 vgg.pth). Frozen: no parameter is trained.
    input_range "unit" feeds the [0, 1] slices to LPIPS as they are, as the original VQ-GAN did (LPIPS expects
    [-1, 1]; the released VQ was trained on this distance all the same); "symmetric" maps them to [-1, 1].
    dropout=True keeps LPIPS' Dropout(0.5) before its linear layers active in training mode, as in the
    original's training (Lightning put the whole module in train mode); False makes LPIPS a fixed metric.
    """

    def __init__(self, backbone_weights: str | os.PathLike | None = None, *, linear_weights: str | os.PathLike | None
                 = None, random_backbone: bool = False, input_range: str = "symmetric", dropout: bool = False
                 ) -> None:
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ConfigError(f"LPIPS input_range must be one of {list(INPUT_RANGES)}, got {input_range!r}")
        self.input_range, self.dropout = input_range, bool(dropout)
        try:
            import lpips
        except ImportError:
            raise MissingDependencyError("the perceptual (LPIPS) term needs the `lpips` package: pip install lpips"
                                         ) from None
        if backbone_weights is None and not random_backbone:
            raise ConfigError(f"the VQ-GAN's LPIPS term needs the VGG16 backbone weights: pass {VGG_FILE_HELP} "
                              "(--vgg16-weights FILE), or switch the term off (perceptual weight 0, "
                              "--perceptual-weight 0)")
        if linear_weights is not None and not Path(linear_weights).is_file():
            raise InputError(f"LPIPS linear-layer file {linear_weights} does not exist")
        if backbone_weights is not None and not Path(backbone_weights).is_file():
            raise InputError(f"VGG16 weights file {backbone_weights} does not exist; expected {VGG_FILE_HELP}")
        backbone = None if backbone_weights is None else _backbone_state(Path(backbone_weights))  # fail early
        # pnet_rand builds torchvision's VGG16 without weights (no download); ours are loaded just below
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False,
                                     model_path=None if linear_weights is None else str(linear_weights))
        if backbone is not None:
            self.lpips.net.load_state_dict(backbone, strict=True)
        self.lpips.eval().requires_grad_(False)
        self.backbone = "random" if backbone_weights is None else Path(backbone_weights).name

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(bool(mode) and self.dropout)  # without dropout: a fixed metric, always in eval mode
        return self

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.input_range == "symmetric":
            a, b = a * 2 - 1, b * 2 - 1
        return self.lpips(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)).flatten(1).mean(dim=1)
