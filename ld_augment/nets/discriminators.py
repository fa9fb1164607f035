"""The VQ-GAN's PatchGAN discriminators: one on 2-D axial slices, one on the 3-D volume (ARCHITECTURE.md 2).

The usual PatchGAN layout (pix2pix / taming-transformers): a stride-2 4x4 conv with LeakyReLU(0.2), then
`n_layers - 1` stride-2 conv + norm + LeakyReLU blocks doubling the width up to 8x, one stride-1 block and a
1-channel stride-1 conv giving a map of patch logits. Written from that description, parameterised by the
spatial dimension so the 2-D and 3-D versions are one class. As in the original's NLayerDiscriminator(3D)
(reference/training/losses/vq_discriminators.pt) every conv pads 2 (ceil(3 / 2)) and has a bias, also before
a norm; its blocks are named model0..model{n+1}, which `released_state_dict_keys` maps to ours.
"""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "group", "none")
PADDING = 2  # the original's padw = ceil((4 - 1) / 2)


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """A map of real/fake logits, one per receptive-field patch ([B, 1, ...] of roughly size / 8).

    norm "batch" is the PatchGAN default; "group" keeps every sample independent of the batch split, which
    makes a multi-process CPU run (no SyncBatchNorm on gloo) equal to one process exactly.
    """

    def __init__(self, dims: int, in_channels: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
                 ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pad = PADDING
        layers: list[nn.Module] = [conv(in_channels, ndf, 4, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [conv(ndf * prev, ndf * mult, 4, stride=stride, padding=pad, bias=True),
                       _norm(norm, dims, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(conv(ndf * mult, 1, 4, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """N(0, 0.02) convs and N(1, 0.02) norm scales, the DCGAN initialisation PatchGANs use."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class VQGANDiscriminator(nn.Module):
    """Both discriminators as one module (one optimizer, one DDP wrapper): forward(slices, volume) -> logits."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        self.image = PatchDiscriminator(2, in_channels, ndf, n_layers, norm)
        self.volume = PatchDiscriminator(3, in_channels, ndf, n_layers, norm)

    def forward(self, slices, volume):  # type: ignore[no-untyped-def]
        return self.image(slices), self.volume(volume)


def released_state_dict_keys(n_layers: int = 3) -> dict[str, str]:
    """The original's block names (model{k}.{i}) -> our `main.{j}` index prefixes, for loading its weights."""
    out = {"model0.0": "main.0"}
    j = 2
    for k in range(1, n_layers + 1):
        out[f"model{k}.0"], out[f"model{k}.1"] = f"main.{j}", f"main.{j + 1}"
        j += 3
    out[f"model{n_layers + 1}.0"] = f"main.{j}"
    return out


def from_released_state_dict(state: dict, n_layers: int = 3) -> dict:
    """An original NLayerDiscriminator(3D) state dict renamed to `PatchDiscriminator` keys."""
    names = released_state_dict_keys(n_layers)
    out = {}
    for key, value in state.items():
        block, _, leaf = key.rpartition(".")
        if block not in names:
            raise KeyError(f"unexpected discriminator key {key!r}")
        out[f"{names[block]}.{leaf}"] = value
    return out
