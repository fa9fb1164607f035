"""Fixed-size network windows cut from a volume: centred on a lesion, clamped to the volume, padded if it is small.

The networks run on a fixed crop (LMNet 64 x 152 x 152 voxels, LINet 128^3), as in the original, whose
inference centres the crop on the lesion and shifts it back inside the volume at the borders. A volume smaller
than the crop along an axis is padded (the crop is centred on the volume there), so every lesion gets the
input size the network was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ld_augment.errors import ConfigError

Triple = tuple[int, int, int]

#: Array orientations a network can have been trained in. Our standardized grid is RAS; the authors trained on
#: their volumes as stored (LPS, like the released demo cases), i.e. the first two axes mirrored.
ORIENTATIONS = ("RAS", "LPS")


def check_orientation(value: str, what: str = "network_orientation") -> str:
    if value not in ORIENTATIONS:
        raise ConfigError(f"{what} must be one of {list(ORIENTATIONS)}, got {value!r}")
    return value


def to_network_axes(array: np.ndarray, orientation: str) -> np.ndarray:
    """A RAS-grid crop as the network saw its training data (LPS: first two axes flipped); its own inverse."""
    if orientation == "LPS":
        return np.ascontiguousarray(np.flip(array, axis=(0, 1)))
    return array


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
    def around(cls, centre: Sequence[float], size: Sequence[int], shape: Sequence[int]) -> CropWindow:
        starts = []
        for c, s, n in zip(centre, size, shape):
            if n >= s:
                starts.append(min(max(int(round(float(c))) - s // 2, 0), n - s))
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
