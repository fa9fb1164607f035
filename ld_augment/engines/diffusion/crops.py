"""Fixed-size network windows cut from a volume: centred on a lesion, clamped to the volume, padded if it is small.

The networks run on a fixed crop (LMNet 64 x 152 x 152 voxels, LINet 128^3, in the network's axis order: see
``ld_augment.io.network_layout``), as in the original, whose inference centres the crop on the lesion -- at
``(first + last) // 2`` of its box, in the network's own array -- and shifts it back inside the volume at the
borders. Windows are therefore computed on the volume as the network sees it (a view in its layout), so a
flipped axis rounds the centre the same way the original did. A volume smaller than the crop along an axis is
padded (the crop is centred on the volume there), so every lesion gets the input size the network was
trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ld_augment.errors import ConfigError

Triple = tuple[int, int, int]
#: How a window is sized around a lesion: "fixed" = the trained crop, a lesion longer than it is cut (what the
#: original's inference does, default for the released files); "grow" = grown to the lesion (`fit_crop`, ours).
WINDOWS = ("fixed", "grow")

def check_crop(crop: Sequence[int], what: str) -> Triple:
    """Validate a crop option: three positive integers."""
    values = tuple(int(c) for c in crop)
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(f"{what} must be three positive voxel counts, got {tuple(crop)}")
    return values  # type: ignore[return-value]


def fit_crop(base: Sequence[int], needed: Sequence[int], divisor: int) -> Triple:
    """``base`` grown where ``needed`` is larger, every axis a multiple of ``divisor`` (the network's stride).

    Growing (rather than cutting the lesion) keeps lesions larger than the trained crop whole; the UNets are
    fully convolutional, so a larger window only costs time.
    """
    grown = (max(int(b), math.ceil(int(n) / divisor) * divisor) for b, n in zip(base, needed))
    return tuple(grown)  # type: ignore[return-value]


@dataclass(frozen=True)
class CropWindow:
    """A window ``[start, start + size)`` in volume voxels; ``start`` is negative where the volume is padded."""

    start: Triple
    size: Triple

    @classmethod
    def for_box(cls, lo: Sequence[int], hi: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> CropWindow:
        """The window of ``size`` centred on the half-open box [lo, hi) as the original does:
        centre ``(lo + hi - 1) // 2`` (first and last voxel, floored), start ``centre - size // 2`` clamped to
        the volume; centred padding where the volume is smaller than the window."""
        starts = []
        for a, b, s, n in zip(lo, hi, size, shape):
            s, n = int(s), int(n)
            if n >= s:
                centre = (int(a) + int(b) - 1) // 2
                starts.append(min(max(centre - s // 2, 0), n - s))
            else:
                starts.append(-((s - n) // 2))
        return cls(tuple(starts), tuple(int(s) for s in size))  # type: ignore[arg-type]

    def overlap(self, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(volume slices, crop slices) of the part of the window that lies inside a volume of ``shape``."""
        vol, crop = [], []
        for a, s, n in zip(self.start, self.size, shape):
            lo, hi = max(a, 0), min(a + s, int(n))
            vol.append(slice(lo, hi))
            crop.append(slice(lo - a, hi - a))
        return tuple(vol), tuple(crop)

    def extract(self, volume: np.ndarray, fill: float = 0) -> np.ndarray:
        """The window's voxels; positions outside the volume get ``fill``."""
        vol, crop = self.overlap(volume.shape)
        out = np.full(self.size, fill, dtype=volume.dtype)
        out[crop] = volume[vol]
        return out

    def valid(self, shape: Sequence[int]) -> np.ndarray:
        """Bool array of the window's size: True where the window lies inside the volume (not padding)."""
        out = np.zeros(self.size, dtype=bool)
        out[self.overlap(shape)[1]] = True
        return out

    def paste(self, window: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """A zero volume of ``shape`` (``window``'s dtype) holding the in-volume part of ``window``."""
        vol, crop = self.overlap(shape)
        out = np.zeros(tuple(int(n) for n in shape), dtype=window.dtype)
        out[vol] = window[crop]
        return out
