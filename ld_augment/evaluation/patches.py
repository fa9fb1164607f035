"""Fixed-size patches around lesions and lesion-free organ tissue, and a rotation-invariant descriptor of each.

They feed the train-on-synthetic, test-on-real check: a small detector learns "lesion here?" from a bank's
patches and is scored on a real dataset's patches. The descriptor (radial HU profile, spread, edge strength)
is blind to orientation, so it learns what a lesion looks like rather than where it sat in its crop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: Default patch edge (mm); lesions larger than this are seen by their centre.
PATCH_MM = 24.0


def patch_voxels(spacing: Sequence[float], size_mm: float = PATCH_MM) -> tuple[int, int, int]:
    """Odd patch size (voxels) per axis covering ``size_mm`` at ``spacing``."""
    return tuple(int(2 * max(1, round(size_mm / 2.0 / float(s))) + 1) for s in spacing)  # type: ignore[return-value]


def patch_at(ct: np.ndarray, centre: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The patch of ``size`` voxels centred on ``centre``; outside the volume the edge value repeats."""
    half = [s // 2 for s in size]
    padded = np.pad(ct, [(h, h) for h in half], mode="edge")
    sl = tuple(slice(int(c), int(c) + s) for c, s in zip(centre, size))
    return np.asarray(padded[sl], dtype=np.float32)


def lesion_free_centres(lesion: np.ndarray, organ: np.ndarray, size: Sequence[int], count: int,
                        rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Up to ``count`` random organ voxels whose patch holds no lesion voxel."""
    near = ndimage.maximum_filter(lesion.astype(np.uint8), size=tuple(int(s) for s in size)) > 0
    candidates = np.argwhere(organ & ~near)
    if len(candidates) == 0 or count <= 0:
        return []
    pick = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [tuple(int(v) for v in candidates[i]) for i in pick]  # type: ignore[misc]


def centre_of(mask: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))  # type: ignore[return-value]


def descriptor(patch: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Rotation-invariant numbers of one patch: HU mean/std in radial shells (mm), percentiles, edge strength."""
    patch = np.clip(np.asarray(patch, dtype=np.float32), -1024.0, 1500.0)
    grid = np.indices(patch.shape).astype(np.float32)
    centre = (np.asarray(patch.shape, dtype=np.float32) - 1) / 2
    r = np.sqrt(sum(((g - c) * float(s)) ** 2 for g, c, s in zip(grid, centre, spacing)))
    rmax = float(min((c + 0.5) * float(s) for c, s in zip(centre, spacing)))
    edges = np.linspace(0.0, rmax, 6)
    edges[1] = max(edges[1], 0.51 * float(max(spacing)))  # the innermost shell holds at least the centre voxel
    out: list[float] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ring = (r >= lo) & (r < hi) if lo > 0 else r < hi
        vals = patch[ring] if ring.any() else patch.ravel()
        out += [float(vals.mean()), float(vals.std())]
    grad = np.sqrt(sum(g**2 for g in np.gradient(patch, *[float(s) for s in spacing])))
    inner = r < edges[3]
    out += [float(v) for v in np.percentile(patch, [10, 50, 90])]
    out += [float(grad[inner].mean()), float(grad[~inner].mean()) if (~inner).any() else 0.0]
    means = np.asarray(out[0:10:2])
    out += [float(means[0] - means[-1]), float(means[:2].mean() - means[3:].mean())]
    return np.asarray(out, dtype=np.float64)
