"""CT intensity normalisation of LesionDiffusion's VQ-GAN and its inverse (ARCHITECTURE.md section 3).

The VQ-GAN was trained on CTs mapped piecewise-linearly from HU [-1000, -200, 200, 1000] to [0, 0.2, 0.8, 1]:
the soft-tissue window [-200, 200] HU gets 60 % of the range, so organ contrast survives quantisation. Values
outside [-1000, 1000] HU saturate, which is why the inverse can only give back [-1000, 1000] HU; callers keep
the original CT wherever they do not write a lesion.
"""

from __future__ import annotations

import numpy as np

HU_KNOTS = (-1000.0, -200.0, 200.0, 1000.0)
NORM_KNOTS = (0.0, 0.2, 0.8, 1.0)


def normalize_ct(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] (float32); below -1000 HU is 0, from 1000 HU on it is 1.

    Computed as the original did, in float32 per segment: (hu - lo) * ((out_hi - out_lo) / (hi - lo)) + out_lo,
    so training crops are bit-identical to the released networks' (a float64 interpolation differs by 1 ulp).
    """
    x = np.asarray(hu, dtype=np.float32)
    out = np.where(x >= np.float32(HU_KNOTS[-1]), np.float32(NORM_KNOTS[-1]), np.float32(0.0)).astype(np.float32)
    for lo, hi, a, b in zip(HU_KNOTS[:-1], HU_KNOTS[1:], NORM_KNOTS[:-1], NORM_KNOTS[1:]):
        lo32, hi32, a32, b32 = (np.float32(v) for v in (lo, hi, a, b))
        inside = (x >= lo32) & (x < hi32)
        out[inside] = (x[inside] - lo32) * ((b32 - a32) / (hi32 - lo32)) + a32
    return out


def denormalize_ct(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> HU (float32), the inverse of :func:`normalize_ct`; values outside [0, 1] saturate at +-1000 HU."""
    return np.interp(np.asarray(values, dtype=np.float64), NORM_KNOTS, HU_KNOTS).astype(np.float32)
