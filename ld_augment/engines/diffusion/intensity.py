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
    """HU -> [0, 1] (float32); below -1000 HU is 0, above 1000 HU is 1."""
    return np.interp(np.asarray(hu, dtype=np.float64), HU_KNOTS, NORM_KNOTS).astype(np.float32)


def denormalize_ct(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> HU (float32), the inverse of :func:`normalize_ct`; values outside [0, 1] saturate at +-1000 HU."""
    return np.interp(np.asarray(values, dtype=np.float64), NORM_KNOTS, HU_KNOTS).astype(np.float32)
