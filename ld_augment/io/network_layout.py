"""The array layout a network was trained on, as one named concept shared by the engines and by training.

Our standardized grid is RAS: index i increases toward the patient's right, j toward anterior, k toward
superior (nibabel axis codes "RAS"). A network, however, learned whatever axis order its
training arrays had, and it only works on crops in that order. A layout is named by the nibabel axis codes of
the network's array (what each array axis increases toward), relative to that RAS grid:

* ``"SAL"`` -- the released LMNet/LINet/VQ. The original loader reorients every volume to nibabel "LAS" and
  then transposes it (2, 1, 0), so its networks see [S, A, L] arrays (axis 0 inferior->superior, 1
  posterior->anterior, 2 right->left) whatever the file's storage orientation. From RAS that is
  ``flip(ras.transpose(2, 1, 0), axis=2)``; its inverse is not itself.
* ``"RAS"`` -- our grid as is (the default of checkpoints trained here before layouts were recorded).
* ``"LPS"`` -- the first two axes mirrored: what older ``ld-augment train`` runs recorded as
  ``orientation: "LPS"``; kept so those checkpoints load with the layout they were really trained in.

Crop sizes are given in the network's order (the released LMNet crop 64 x 152 x 152 is 64 voxels along S)
and mapped to the grid with :meth:`NetworkLayout.grid_shape`. nibabel's orientation algebra gives the axis
permutation and flips, so any axis-code string is a valid layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from nibabel.orientations import axcodes2ornt

from ld_augment.errors import ConfigError

GRID_CODES = "RAS"
RELEASED = "SAL"
#: Names accepted besides raw axis codes.
ALIASES = {"released": RELEASED, "grid": GRID_CODES}
#: The layouts the project documents; any other permutation of one letter per axis is accepted too.
KNOWN = (RELEASED, GRID_CODES, "LPS")
#: Key under which our checkpoints record the layout (``extra["layout"]``); older ones wrote ``"orientation"``.
RECORD_KEY = "layout"
LEGACY_RECORD_KEY = "orientation"


@dataclass(frozen=True)
class NetworkLayout:
    """Axis codes of a network's array relative to our RAS grid, and the conversions both ways."""

    codes: str

    @cached_property
    def _ornt(self) -> np.ndarray:
        return axcodes2ornt(tuple(self.codes))

    @property
    def perm(self) -> tuple[int, int, int]:
        """Grid axis that each network axis runs along."""
        return tuple(int(a) for a in self._ornt[:, 0])  # type: ignore[return-value]

    @property
    def flips(self) -> tuple[bool, bool, bool]:
        """Whether each network axis runs against its grid axis."""
        return tuple(bool(f < 0) for f in self._ornt[:, 1])  # type: ignore[return-value]

    @property
    def is_identity(self) -> bool:
        return self.codes == GRID_CODES

    def to_network(self, array: np.ndarray) -> np.ndarray:
        """A grid-ordered array (last three axes spatial) in the network's order: a view, no copy."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        flipped = tuple(lead + j for j, f in enumerate(self.flips) if f)
        return np.flip(out, axis=flipped) if flipped else out

    def from_network(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_network` (a view)."""
        lead = array.ndim - 3
        flipped = tuple(lead + j for j, f in enumerate(self.flips) if f)
        out = np.flip(array, axis=flipped) if flipped else array
        inverse = np.argsort(self.perm)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(p) for p in inverse))

    def network_shape(self, grid_shape: Sequence[int]) -> tuple[int, int, int]:
        """Grid-ordered sizes -> network order."""
        return tuple(int(grid_shape[p]) for p in self.perm)  # type: ignore[return-value]

    def grid_shape(self, network_shape: Sequence[int]) -> tuple[int, int, int]:
        """Network-ordered sizes (e.g. a crop) -> grid order."""
        out = [0, 0, 0]
        for j, p in enumerate(self.perm):
            out[p] = int(network_shape[j])
        return tuple(out)  # type: ignore[return-value]

    def box_to_network(self, start: Sequence[int], stop: Sequence[int], grid_shape: Sequence[int]
                       ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """A half-open grid box [start, stop) as the same voxels' box in network indices."""
        lo, hi = [], []
        for p, f in zip(self.perm, self.flips):
            a, b, n = int(start[p]), int(stop[p]), int(grid_shape[p])
            lo.append(n - b if f else a)
            hi.append(n - a if f else b)
        return tuple(lo), tuple(hi)  # type: ignore[return-value]


def layout(value: str | NetworkLayout, what: str = "network_layout") -> NetworkLayout:
    """A layout from its name ("released", "SAL", "RAS", "LPS", any axis codes) or an instance."""
    if isinstance(value, NetworkLayout):
        return value
    text = ALIASES.get(str(value), str(value))
    codes = text.upper()
    if len(codes) == 3:
        try:
            axcodes2ornt(tuple(codes))
        except ValueError:
            pass
        else:
            if sorted(codes.translate(str.maketrans("LPI", "RAS"))) == sorted(GRID_CODES):
                return NetworkLayout(codes)
    raise ConfigError(f"{what} must be 'released' or three axis codes such as {list(KNOWN)} (one of R/L, A/P, "
                      f"S/I each), got {value!r}")


def recorded_layout(extra: Mapping[str, Any] | None, default: str = GRID_CODES) -> NetworkLayout:
    """The layout a checkpoint of ours was trained in, from its ``extra`` record.

    Current checkpoints record ``extra["layout"]``; older ones recorded ``extra["orientation"]`` ("RAS" or
    "LPS", the latter meaning the first two axes mirrored), which are the same axis codes; nothing recorded
    means our grid as is (RAS), what training did before either key existed.
    """
    extra = extra or {}
    value = extra.get(RECORD_KEY) or extra.get(LEGACY_RECORD_KEY) or default
    return layout(value, "recorded layout")
