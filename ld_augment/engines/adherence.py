"""How well a synthesized lesion follows its report: stored with every lesion and used by the tests.

Measured on a crop around the lesion: the lesion's mean HU against the organ's parenchyma HU near it (before
synthesis, without the lesion), the requested CT value, the mask's bbox extent against the requested size,
the fraction of the lesion inside the organ, and the rim-minus-core HU for ring enhancement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ld_augment.engines.attributes import expected_contrast_sign, lesion_spec
from ld_augment.engines.procedural.density import parenchyma_hu
from ld_augment.engines.procedural.fields import mask_slices

#: |measured contrast| below which an "isodense" lesion counts as iso.
ISO_TOLERANCE_HU = 15.0
#: Width (mm) of the rim used for rim-vs-core contrast.
RIM_MM = 2.0


def measure_adherence(
    ct_before: np.ndarray,
    ct_after: np.ndarray,
    lesion_mask: np.ndarray,
    organ_mask: np.ndarray,
    report: Any,
    spacing: Sequence[float],
    *,
    organ_name: str = "organ",
    neighbourhood_mm: float = 15.0,
) -> dict:
    """Requested vs measured contrast, CT value, size, organ overlap and rim contrast (JSON-ready dict)."""
    lesion_mask = np.asarray(lesion_mask, dtype=bool)
    spec = lesion_spec(report)
    if not lesion_mask.any():
        return {"lesion_voxels": 0, "requested_density": spec.density}
    spacing = tuple(float(s) for s in spacing)
    region = mask_slices(lesion_mask, [int(np.ceil(neighbourhood_mm / s)) for s in spacing])
    mask = lesion_mask[region]
    organ = np.asarray(organ_mask, dtype=bool)[region]
    before = ct_before[region].astype(np.float64)
    after = ct_after[region].astype(np.float64)

    reference_voxels = organ & ~ndimage.binary_dilation(mask, iterations=2)
    if not reference_voxels.any():
        reference_voxels = organ & ~mask
    # the parenchyma (fat and gas excluded), as the engines and the report's CT value use it
    organ_hu = parenchyma_hu(before[reference_voxels], organ_name) if reference_voxels.any() else float("nan")
    lesion_hu = float(after[mask].mean())
    contrast = lesion_hu - organ_hu
    sign = expected_contrast_sign(spec, organ_name)
    if sign is None or np.isnan(contrast):
        contrast_ok = None
    elif sign == 0:
        contrast_ok = abs(contrast) < ISO_TOLERANCE_HU
    else:
        contrast_ok = bool(np.sign(contrast) == sign)

    idx = np.nonzero(mask)
    extent = [int(i.max() - i.min() + 1) for i in idx]
    result: dict[str, Any] = {
        "lesion_voxels": int(mask.sum()),
        "requested_density": spec.density,
        "organ_hu_before": organ_hu,
        "lesion_hu_before": float(before[mask].mean()),
        "lesion_hu_after": lesion_hu,
        "requested_contrast_sign": sign,
        "measured_contrast_hu": contrast,
        "contrast_ok": contrast_ok,
        "requested_ct_value": spec.ct_value,
        "ct_value_error_hu": None if spec.ct_value is None else lesion_hu - spec.ct_value,
        "requested_size_vox": None if spec.size is None else list(spec.size),
        "measured_size_vox": extent,
        "measured_size_mm": [e * s for e, s in zip(extent, spacing)],
        "size_ratio": None if spec.size is None else [e / max(r, 1) for e, r in zip(extent, spec.size)],
        "fraction_inside_organ": float((mask & organ).sum() / mask.sum()),
        "volume_ml": float(mask.sum() * np.prod(spacing) / 1000.0),
    }
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    rim, core = mask & (depth <= RIM_MM), mask & (depth > RIM_MM)
    if rim.any() and core.any():
        result["rim_hu"] = float(after[rim].mean())
        result["core_hu"] = float(after[core].mean())
        result["rim_core_contrast_hu"] = result["rim_hu"] - result["core_hu"]
    return result
