"""Leakage by content: bank cases whose image is a near-duplicate of a target case (validation or test).

An exact file hash misses a copy that was re-saved, cropped by a voxel's worth of header, re-windowed or had a
handful of voxels edited; the case id misses a renamed copy. Here every image is reduced to a fingerprint: the
CT clipped to [-1000, 1000] HU, averaged over blocks and linearly resampled onto a fixed 24^3 grid, then
z-scored. Two images are near
duplicates when the Pearson correlation of their fingerprints is at least `THRESHOLD` (0.98). A bank case is its
source plus a few lesions, so it stays above the threshold against its source (and against any copy of it),
while CTs of different patients, even of the same field of view, correlate well below it. The measure is
reported with every exclusion. Pure numpy/scipy/nibabel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

THRESHOLD = 0.98
GRID = (24, 24, 24)
HU_RANGE = (-1000.0, 1000.0)


def fingerprint(path: str | Path) -> np.ndarray:
    """The image's fingerprint: float32 vector of length prod(GRID), zero mean, unit variance (or all zeros)."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from ld_augment.errors import InputError

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for one problem: an unreadable image
        raise InputError(f"{path}: cannot read the image to compare its content ({type(exc).__name__}: {exc})") \
            from None
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    data = np.clip(data, *HU_RANGE)
    factors = [max(1, s // g) for s, g in zip(data.shape, GRID)]     # average blocks first: no aliasing
    if any(f > 1 for f in factors):
        cut = [s - s % f for s, f in zip(data.shape, factors)]
        data = data[: cut[0], : cut[1], : cut[2]].reshape(
            cut[0] // factors[0], factors[0], cut[1] // factors[1], factors[1], cut[2] // factors[2], factors[2]
        ).mean(axis=(1, 3, 5))
    small = zoom(data, [g / s for g, s in zip(GRID, data.shape)], order=1, grid_mode=False)
    small = small[: GRID[0], : GRID[1], : GRID[2]].astype(np.float32).ravel()
    std = float(small.std())
    if std < 1e-6:
        return np.zeros(small.size, np.float32)
    return (small - small.mean()) / std


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlations of every row of `a` (n, d) with every row of `b` (m, d): an (n, m) matrix."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0] if a.ndim == 2 else 0, b.shape[0] if b.ndim == 2 else 0), np.float32)
    return (a @ b.T) / a.shape[1]


def near_duplicates(bank: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray],
                    threshold: float = THRESHOLD) -> dict[str, dict[str, float]]:
    """{bank case: {target case: correlation}} for every pair at or above `threshold` (rounded to 4 digits)."""
    bank_ids, target_ids = list(bank), list(target)
    if not bank_ids or not target_ids:
        return {}
    corr = correlations(np.stack([bank[k] for k in bank_ids]), np.stack([target[k] for k in target_ids]))
    out: dict[str, dict[str, float]] = {}
    for i, j in zip(*np.nonzero(corr >= threshold)):
        out.setdefault(bank_ids[i], {})[target_ids[j]] = round(float(corr[i, j]), 4)
    return out


def fingerprints(files: Mapping[str, Path], cache: dict[str, tuple[list[int], np.ndarray]] | None = None,
                 progress: Iterable | None = None) -> dict[str, np.ndarray]:
    """Fingerprints of {key: file}, reusing `cache` entries whose (size, mtime_ns) still match (updated in place)."""
    out: dict[str, np.ndarray] = {}
    for key in (progress if progress is not None else files):
        path = Path(files[key])
        st = path.stat()
        sig = [st.st_size, st.st_mtime_ns]
        if cache is not None and key in cache and list(cache[key][0]) == sig:
            out[key] = cache[key][1]
            continue
        out[key] = fingerprint(path)
        if cache is not None:
            cache[key] = (sig, out[key])
    return out


def load_cache(path: Path) -> dict[str, tuple[list[int], np.ndarray]]:
    """A fingerprint cache written by `save_cache` ({} when absent or unreadable: it is only a cache)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [str(k) for k in npz["keys"]]
            sigs, vecs = npz["sigs"], npz["vectors"]
    except (OSError, ValueError, KeyError):
        return {}
    if vecs.ndim != 2 or vecs.shape[1] != int(np.prod(GRID)):
        return {}
    return {k: ([int(v) for v in s], vecs[i]) for i, (k, s) in enumerate(zip(keys, sigs))}


def save_cache(path: Path, cache: Mapping[str, tuple[list[int], np.ndarray]]) -> None:
    """Written to a temporary file and moved into place (a cache that is torn is simply rebuilt)."""
    import os

    keys = sorted(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, keys=np.array(keys, dtype=str),
                        sigs=np.array([cache[k][0] for k in keys], dtype=np.int64).reshape(len(keys), 2),
                        vectors=np.stack([cache[k][1] for k in keys]).astype(np.float32) if keys
                        else np.zeros((0, int(np.prod(GRID))), np.float32))
    os.replace(tmp, path)


def describe(matches: Mapping[str, float]) -> str:
    """'kits_000 (r=0.9991)' for the messages and logs."""
    return ", ".join(f"{k} (r={v:.4f})" for k, v in sorted(matches.items(), key=lambda kv: -kv[1]))
