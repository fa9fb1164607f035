"""Write standardized-space lesions back into the user's source CT, touching only their neighbourhood.

The synthetic CT must keep the source's shape, affine, orientation and dtype, and every voxel outside the
written neighbourhood must stay bit-identical. So only the *change* (synthetic minus healthy HU) and the
lesion mask are resampled, onto the small source-grid box that covers them, and added to the stored values.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.io.geometry import VoxelBox, resample_region_to_source, source_region_for_std_box


@dataclass
class SourceWrite:
    """The source-grid result: new stored CT values, the lesion mask and the region that was touched."""

    ct_raw: np.ndarray          # stored (unscaled) values, source dtype
    lesion: np.ndarray          # bool, source shape
    changed: np.ndarray         # bool, voxels whose stored value differs from the source
    region: VoxelBox | None


def _stored_values(img: nib.Nifti1Image) -> tuple[np.ndarray, float, float]:
    """Raw stored voxel values plus the header's scaling (slope, inter): HU = raw * slope + inter."""
    dataobj = img.dataobj
    raw = np.asarray(dataobj.get_unscaled()) if hasattr(dataobj, "get_unscaled") else np.asarray(dataobj)
    slope, inter = img.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return np.array(raw, copy=True), slope, inter


def write_back(source_img: nib.Nifti1Image, std_affine: np.ndarray, delta_hu: np.ndarray,
               lesion_std: np.ndarray, *, hu_range: tuple[float, float] | None = None) -> SourceWrite:
    """Add the standardized-space HU change `delta_hu` and map `lesion_std` into the source grid.

    Only the source box covering the changed voxels (plus two voxels of padding for interpolation) is
    resampled; voxels whose rounded change is zero keep their exact stored value.
    """
    raw, slope, inter = _stored_values(source_img)
    lesion = np.zeros(raw.shape[:3], dtype=bool)
    changed = np.zeros(raw.shape[:3], dtype=bool)
    touched = (delta_hu != 0) | lesion_std
    if not touched.any():
        return SourceWrite(raw, lesion, changed, None)
    box = ndimage.find_objects(touched.astype(np.uint8))[0]
    std_box = VoxelBox(tuple(s.start for s in box), tuple(s.stop for s in box))  # type: ignore[arg-type]
    region = source_region_for_std_box(std_box, std_affine, raw.shape, source_img.affine, pad=2)
    if region.is_empty:
        return SourceWrite(raw, lesion, changed, None)
    delta_src = resample_region_to_source(delta_hu.astype(np.float32), std_affine, raw.shape, source_img.affine,
                                          region, order=1, cval=0.0, mode="constant")
    lesion_src = resample_region_to_source(lesion_std.astype(bool), std_affine, raw.shape, source_img.affine,
                                           region, order=1, cval=0.0, mode="constant")
    old = raw[region.slices].astype(np.float64)
    new_hu = old * slope + inter + delta_src
    if hu_range is not None:
        new_hu = np.clip(new_hu, *hu_range)
    new_raw = (new_hu - inter) / slope
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        new_raw = np.clip(np.rint(new_raw), info.min, info.max)
    new_raw = new_raw.astype(raw.dtype)
    diff = new_raw != raw[region.slices]
    region_vals = raw[region.slices]
    region_vals[diff] = new_raw[diff]
    changed[region.slices] = diff
    lesion[region.slices] = lesion_src
    return SourceWrite(raw, lesion, changed, region)


def source_image_like(source_img: nib.Nifti1Image, raw: np.ndarray) -> nib.Nifti1Image:
    """A new image with the source's affine, header and dtype around the stored values `raw`.

    With identity scaling (slope 1, intercept 0: nearly every CT) the stored values are written unchanged.
    nibabel recomputes scl_slope/scl_inter for in-memory arrays, so a scaled source is written as HU and
    re-scaled by nibabel: voxel values then agree to within one scaling step, not bit for bit.
    """
    header = source_img.header.copy()
    slope, inter = source_img.header.get_slope_inter()
    scaled = slope is not None and np.isfinite(slope) and (slope != 1 or (inter or 0) != 0)
    data = raw.astype(np.float64) * slope + (inter or 0.0) if scaled else raw
    img = nib.Nifti1Image(data, source_img.affine, header)
    img.set_data_dtype(source_img.get_data_dtype())
    return img
