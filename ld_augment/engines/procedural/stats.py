"""Measure the organ around a lesion: its reference HU and its noise (level and spatial correlation).

The texture engine paints relative to these numbers so a "hypodense" lesion is hypodense in THIS scan's
liver (contrast phase, kVp and reconstruction kernel all shift organ HU), and the synthetic noise looks like
the scan's own noise rather than a generic level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import is_bone, is_lung
from ld_augment.engines.procedural.density import parenchyma_hu
from ld_augment.engines.procedural.fields import mask_slices, robust_std

#: Width (mm) of the Gaussian that estimates the smooth trend removed before measuring noise.
TREND_MM = 2.0
#: HU window of voxels whose residual counts as organ noise: drops fat and gas, but not the low tail of the
#: parenchyma's own noise (a narrower window would truncate it and underestimate the SD).
NOISE_WINDOW = (-30.0, 300.0)


@dataclass(frozen=True)
class OrganStats:
    median_hu: float  # parenchyma reference (density.parenchyma_hu): fat and gas excluded
    noise_std: float  # robust std of organ voxels after removing the smooth trend
    noise_sigma_vox: tuple[float, float, float]  # Gaussian correlation length of the noise, per axis
    voxels: int


def _trend_sigma(spacing: Sequence[float]) -> tuple[float, ...]:
    return tuple(TREND_MM / float(s) for s in spacing)


def residual(values: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``values`` minus their smooth trend (Gaussian of TREND_MM): the noise part every measurement here uses."""
    values = values.astype(np.float32, copy=False)
    return values - ndimage.gaussian_filter(values, _trend_sigma(spacing))


def _correlation_sigma(residual: np.ndarray, valid: np.ndarray) -> tuple[float, float, float]:
    """Per-axis sigma of Gaussian-smoothed white noise with the residual's lag-1 autocorrelation rho.

    Smoothing white noise with a Gaussian of sigma s gives lag-1 correlation exp(-1 / (4 s^2)), so
    s = sqrt(-1 / (4 ln rho)).
    """
    sigmas = []
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(None, -1), slice(1, None)
        both = valid[tuple(a)] & valid[tuple(b)]
        if both.sum() < 50:
            sigmas.append(0.0)
            continue
        x, y = residual[tuple(a)][both], residual[tuple(b)][both]
        rho = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
        rho = min(rho, 0.95)
        sigmas.append(float(np.sqrt(-1.0 / (4.0 * np.log(rho)))) if rho > 0.05 else 0.0)
    return tuple(sigmas)  # type: ignore[return-value]


def organ_stats(
    ct: np.ndarray,
    organ_mask: np.ndarray,
    exclude: np.ndarray,
    region: tuple[slice, ...],
    spacing: Sequence[float],
    *,
    min_voxels: int = 200,
    organ_name: str = "organ",
) -> OrganStats:
    """Statistics of organ voxels in ``region`` (minus ``exclude`` and the organ's boundary layer).

    Noise is measured on the parenchyma (soft-tissue window) when enough of it exists, so gas in a stomach
    or fat in a pancreas does not inflate it. Falls back to the whole organ's bounding box when the neighbourhood holds fewer than ``min_voxels``
    usable voxels (a lesion filling a small organ).
    """
    organ = organ_mask[region] & ~exclude[region]
    if organ.sum() < min_voxels:
        free = organ_mask & ~exclude
        region = mask_slices(free if free.any() else organ_mask, (2, 2, 2))
        organ = organ_mask[region] & ~exclude[region]
        if not organ.any():
            organ = organ_mask[region]
    inner = ndimage.binary_erosion(organ)
    valid = inner if inner.sum() >= min_voxels else organ
    values = ct[region].astype(np.float32)
    residual = values - ndimage.gaussian_filter(values, _trend_sigma(spacing))
    reference = parenchyma_hu(values[valid], organ_name)
    soft = valid & (values >= NOISE_WINDOW[0]) & (values <= NOISE_WINDOW[1])
    soft = ndimage.binary_erosion(soft) & soft  # a trend across a fat/gas edge is no noise
    if not (is_bone(organ_name) or is_lung(organ_name)) and soft.sum() >= min_voxels // 2:
        valid = soft
    return OrganStats(
        median_hu=reference,
        noise_std=robust_std(residual[valid]),
        noise_sigma_vox=_correlation_sigma(residual, valid),
        voxels=int(valid.sum()),
    )


#: Neighbourhoods (mm beyond the lesion's box) searched in turn for the scan's soft tissue, then the whole scan.
SOFT_TISSUE_SEARCH_MM = (30.0, 60.0)


def soft_tissue_stats(ct: np.ndarray, lesion_mask: np.ndarray, spacing: Sequence[float], *,
                      min_voxels: int = 200) -> OrganStats | None:
    """The scan's own soft-tissue noise near a lesion (voxels in NOISE_WINDOW, two voxels from any other tissue),
    or None where the scan holds too little soft tissue to measure.

    A solid lung lesion is soft tissue: it carries the scan's quantum noise, not the lung's residual, which is
    mostly the lung's structure (vessels, septa): 41-56 HU in the shared 3 mm CT's lower lobes against 9 HU in
    its liver and spleen; matched to the lung, large solid nodules were 1.4x as heterogeneous as LIDC's at 3 mm.
    """
    for grow_mm in (*SOFT_TISSUE_SEARCH_MM, None):
        region = (mask_slices(lesion_mask, [int(np.ceil(grow_mm / float(s))) for s in spacing])
                  if grow_mm is not None else tuple(slice(None) for _ in range(3)))
        values = ct[region].astype(np.float32)
        soft = (values >= NOISE_WINDOW[0]) & (values <= NOISE_WINDOW[1]) & ~lesion_mask[region]
        soft = ndimage.binary_erosion(soft, iterations=2)  # a trend across a tissue edge is no noise
        if soft.sum() >= min_voxels:
            noise = residual(values, spacing)
            return OrganStats(median_hu=float(np.median(values[soft])), noise_std=robust_std(noise[soft]),
                              noise_sigma_vox=_correlation_sigma(noise, soft), voxels=int(soft.sum()))
    return None


def matched_noise(shape: Sequence[int], stats: OrganStats, spacing: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Noise with the organ's correlation whose detrended robust std equals the organ's (same measurement)."""
    noise = rng.standard_normal(tuple(shape)).astype(np.float32)
    if any(s > 0 for s in stats.noise_sigma_vox):
        noise = ndimage.gaussian_filter(noise, stats.noise_sigma_vox)
    residual = noise - ndimage.gaussian_filter(noise, _trend_sigma(spacing))
    measured = robust_std(residual)
    return noise * (stats.noise_std / measured if measured > 0 else 0.0)
