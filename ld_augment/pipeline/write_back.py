"""Write standardized-space lesions back into the user's source CT, touching only their neighbourhood.

The synthetic CT must keep the source's shape, affine, orientation and dtype, and every voxel outside the
written neighbourhood must stay bit-identical. So only the *change* (synthetic minus healthy HU) and the
lesion mask are resampled, onto the small source-grid box that covers them, and added to the stored values.

Noise is then matched in the SOURCE grid, the grid a segmenter trains on: the engines synthesize noise on the
standardized grid, whose CT was interpolated from the source and is smoother than it, so a lesion sampled
back at the source's voxels has about half the organ's noise there (a texture shortcut). After the change is
added, the lesion's noise is measured with the same detrended robust estimate as the organ around it (in
the source grid) and topped up with noise of the organ's own spatial correlation; variation a heterogeneous
lesion has beyond the organ's noise is kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.engines.procedural.density import parenchyma_hu
from ld_augment.engines.procedural.fields import robust_std
from ld_augment.engines.procedural.stats import matched_noise, organ_stats, residual
from ld_augment.io.geometry import VoxelBox, resample_region_to_source, source_region_for_std_box


@dataclass
class SourceWrite:
    """The source-grid result: new stored CT values, the lesion mask and the region that was touched."""

    ct_raw: np.ndarray          # stored (unscaled) values, source dtype
    lesion: np.ndarray          # bool, source shape
    changed: np.ndarray         # bool, voxels whose stored value differs from the source
    region: VoxelBox | None
    noise: dict | None = None   # source-grid noise matching: organ / lesion SD before and after


def _stored_values(img: nib.Nifti1Image) -> tuple[np.ndarray, float, float]:
    """Raw stored voxel values plus the header's scaling (slope, inter): HU = raw * slope + inter."""
    dataobj = img.dataobj
    raw = np.asarray(dataobj.get_unscaled()) if hasattr(dataobj, "get_unscaled") else np.asarray(dataobj)
    slope, inter = img.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return np.array(raw, copy=True), slope, inter


def source_spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size (mm) of an image from its affine's column norms (robust to a header without zooms)."""
    return tuple(float(v) for v in nib.affines.voxel_sizes(img.affine))  # type: ignore[return-value]


def lesion_in_source(source_img: nib.Nifti1Image, std_affine: np.ndarray, lesion_std: np.ndarray) -> np.ndarray:
    """The standardized lesion mask as the source grid will label it (bool, source shape; linear, >= 0.5)."""
    lesion = np.zeros(source_img.shape[:3], dtype=bool)
    if not lesion_std.any():
        return lesion
    box = ndimage.find_objects(lesion_std.astype(np.uint8))[0]
    std_box = VoxelBox(tuple(s.start for s in box), tuple(s.stop for s in box))  # type: ignore[arg-type]
    region = source_region_for_std_box(std_box, std_affine, source_img.shape[:3], source_img.affine, pad=2)
    if region.is_empty:
        return lesion
    lesion[region.slices] = resample_region_to_source(lesion_std.astype(bool), std_affine, source_img.shape[:3],
                                                      source_img.affine, region, order=1, cval=0.0, mode="constant")
    return lesion


def transition_band(delta_hu: np.ndarray, lesion_std: np.ndarray, spacing: tuple[float, ...],
                    reach_mm: float = 4.0, floor: float = 0.1) -> np.ndarray:
    """The margin's transition band: changed voxels under half the lesion's core contrast (an ill-defined edge).

    Engine-agnostic (read from the change itself, smoothed over ~1 mm so the new noise does not count): label
    voxels under half the core contrast, and voxels within ``reach_mm`` outside the label changed by more
    than ``floor`` of it (the outer half of a margin centred on the label's surface). An isodense lesion (core
    contrast < 5 HU) has no band. Returned as bool in the standardized grid.
    """
    band = np.zeros(lesion_std.shape, dtype=bool)
    if not lesion_std.any():
        return band
    pad = int(np.ceil(reach_mm / min(spacing))) + 2
    box = ndimage.find_objects(lesion_std.astype(np.uint8))[0]
    box = tuple(slice(max(sl.start - pad, 0), sl.stop + pad) for sl in box)
    mask = lesion_std[box]
    smooth = ndimage.gaussian_filter(delta_hu[box].astype(np.float32), [1.0 / s for s in spacing])
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    core = mask & (depth >= 0.6 * depth.max())
    contrast = float(np.median(smooth[core]))
    if abs(contrast) < 5.0:
        return band
    toward = smooth * np.sign(contrast)
    near = ~mask & (ndimage.distance_transform_edt(~mask, sampling=spacing) <= reach_mm)
    changed = np.abs(delta_hu[box]) > 0
    band[box] = (mask & (toward < 0.5 * abs(contrast))) | (near & changed & (toward >= floor * abs(contrast)))
    return band


def _lesion_core(lesion: np.ndarray) -> np.ndarray:
    """Lesion voxels away from its edge (where a detrended residual is noise, not the lesion/organ step)."""
    core = ndimage.binary_erosion(lesion)
    return core if core.sum() >= 8 else lesion


def match_source_noise(new_hu: np.ndarray, lesion: np.ndarray, organ: np.ndarray, spacing: tuple[float, ...],
                       rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
    """Top the lesion's noise up to the surrounding organ's, measured in this (source-grid) region.

    Returns the new HU and a record; unchanged when the organ is too small to measure or the lesion already
    has the organ's noise (or more, e.g. heterogeneous texture).
    """
    if not lesion.any() or not organ.any():
        return new_hu, None
    exclude = ndimage.binary_dilation(lesion, iterations=2)
    full = tuple(slice(0, n) for n in new_hu.shape)
    try:
        stats = organ_stats(new_hu.astype(np.float32), organ, exclude, full, spacing, min_voxels=30)
    except ValueError:
        return new_hu, None
    core = _lesion_core(lesion)
    before = robust_std(residual(new_hu.astype(np.float32), spacing)[core])
    record = {"organ_sd": round(stats.noise_std, 2), "lesion_sd_before": round(before, 2)}
    deficit = float(np.sqrt(max(stats.noise_std**2 - before**2, 0.0)))
    if deficit > 0.05 * stats.noise_std:
        unit = matched_noise(new_hu.shape, stats, spacing, rng) / max(stats.noise_std, 1e-6)
        new_hu = new_hu + deficit * unit * lesion
    record["lesion_sd_after"] = round(robust_std(residual(new_hu.astype(np.float32), spacing)[core]), 2)
    return new_hu, record


#: Full width at half maximum (mm) of the point-spread function of a CT image at least, whatever its grid.
#: An engine with ideal edges (a sharp lesion painted as a step) gets it beyond its label when written into a
#: grid no coarser than the standardized one: LIDC nodules on <= 1.25 mm slices, at 1 mm, carry 0.08-0.14 of
#: their contrast within 1 mm outside the reader's contour, procedural ones written into a 1 mm scan 0.00-0.09
#: without it and 0.10-0.18 with it (size bands; benchmarks/bench_edge_profile.py: median 0.11, LIDC 0.10).
#: A coarser source grid's own partial volume is wider (3 mm: 2.8 mm) and stands for it.
SCAN_PSF_FWHM_MM = 1.25


def _blur_sigma(std_affine: np.ndarray, source_affine: np.ndarray, floor_mm: float) -> list[float]:
    std = np.abs(np.asarray(std_affine, float)[:3, :3]).sum(axis=0)
    src = np.abs(np.asarray(source_affine, float)[:3, :3]).sum(axis=1)  # source extent along each world axis
    order = np.argmax(np.abs(np.asarray(std_affine, float)[:3, :3]), axis=0)  # world axis of each std axis
    return [max(float(np.sqrt(max(src[w] ** 2 - std[a] ** 2, 0.0))), floor_mm) / 2.355 / std[a]
            for a, w in enumerate(order)]


def _reader_contour(lesion_std: np.ndarray, std_affine: np.ndarray, fwhm_mm: float, share: float,
                    spread: float = 0.0) -> np.ndarray:
    """The lesion grown to a reader's contour: where, imaged with ``fwhm_mm``, it still shows ``share`` of its
    contrast, traced slice by slice (one voxel out in the axial plane at most: the blur summed between spicules
    would fill the gaps a reader traces around, and a contour grown through the caps rounds a 1 mm mask off).
    Computed on the lesion's box (the standardized arrays span the whole scan): exact, as zero lies beyond.

    With ``spread`` each slice's share is drawn from ``share`` +- ``spread``: a reader traces every slice anew,
    and where on the edge's ramp the contour falls varies from slice to slice. One share for all slices grew a
    ring that rounded a small nodule off (LIDC's thin-slice solid nodules under 8 mm at 1 mm: convexity 0.89,
    sphericity 0.87; procedural ones with one share 0.95 / 0.92). The draw is seeded by the lesion's own voxels,
    so the quality gate's view of the label and the written label are the same."""
    outline = lesion_std.copy()
    found = ndimage.find_objects(lesion_std.astype(np.uint8))
    if not found:
        return outline
    box = tuple(slice(max(b.start - 2, 0), min(b.stop + 2, n)) for b, n in zip(found[0], lesion_std.shape))
    in_plane = ndimage.generate_binary_structure(3, 1)
    z_axis = int(np.flatnonzero(np.argmax(np.abs(np.asarray(std_affine, float)[:3, :3]), axis=0) == 2)[0])
    np.moveaxis(in_plane, z_axis, 0)[[0, 2]] = False  # no neighbour along world z
    threshold: float | np.ndarray = float(share)
    if spread > 0:
        tight = lesion_std[found[0]]
        rng = np.random.default_rng(zlib.crc32(np.packbits(tight).tobytes() + str(tight.shape).encode()))
        per_slice = np.full(box[z_axis].stop - box[z_axis].start, float(share))
        first = found[0][z_axis].start - box[z_axis].start
        per_slice[first:first + tight.shape[z_axis]] = rng.uniform(share - spread, share + spread,
                                                                   tight.shape[z_axis])
        threshold = np.clip(per_slice, 0.0, 1.0).reshape([-1 if a == z_axis else 1 for a in range(3)])
    # the point-spread function alone: the standardized grid as its own source adds no partial volume
    seen = source_voxel_average(lesion_std[box].astype(np.float32), std_affine, std_affine, fwhm_mm) >= threshold
    outline[box] |= ndimage.binary_dilation(lesion_std[box], in_plane) & seen
    return outline


def written_outline(lesion_std: np.ndarray, std_affine: np.ndarray, psf_floor_mm: float = 0.0,
                    contour_share: float | None = None, contour_spread: float = 0.0, **_: Any) -> np.ndarray:
    """The label ``write_back`` writes, on the standardized grid: the mask, or with ``contour_share`` the mask
    grown to the reader's contour. Takes ``write_back``'s options (others ignored), so the quality gate can judge
    the label as written."""
    lesion_std = np.asarray(lesion_std, bool)
    if contour_share is None:
        return lesion_std
    return _reader_contour(lesion_std, std_affine, psf_floor_mm, contour_share, contour_spread)


def source_voxel_average(delta_hu: np.ndarray, std_affine: np.ndarray, source_affine: np.ndarray,
                         floor_mm: float = 0.0) -> np.ndarray:
    """The standardized change averaged over a source voxel's extent (partial volume), before point sampling.

    A source voxel integrates what lies within it: one straddling the lesion's surface shows part of the
    contrast, as real interfaces do. Point-sampling the fine change at voxel centres instead gave the organ
    voxels touching a label none of it. Approximated by a Gaussian whose FWHM is the source extent beyond the
    standardized voxel, per world axis, and at least ``floor_mm`` (the scan's own blur, SCAN_PSF_FWHM_MM).
    """
    sigma = _blur_sigma(std_affine, source_affine, floor_mm)
    if max(sigma) < 0.25:
        return delta_hu.astype(np.float32)
    return ndimage.gaussian_filter(delta_hu.astype(np.float32), sigma, mode="constant")


def _in_source(source_img: nib.Nifti1Image, std_affine: np.ndarray, delta_hu: np.ndarray, lesion_std: np.ndarray,
               region: VoxelBox, partial_label_share: float | None,
               average_under_label: bool, psf_floor_mm: float = 0.0,
               contour_share: float | None = None, contour_spread: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The change (HU) and the label on the source ``region``, as ``write_back`` writes them."""
    shape = source_img.shape[:3]
    # partial volume (at least the scan's blur, ``psf_floor_mm``) spills into the voxels around the label;
    # under it the lesion's own values stay (a core that replaced gas or fat is not averaged back towards
    # them), or with ``average_under_label`` the same blur acts under the label too, as it does on a real
    # nodule: the edge's ramp straddles the surface instead of starting at it
    averaged = source_voxel_average(delta_hu, std_affine, source_img.affine, psf_floor_mm)
    if not average_under_label:
        averaged = np.where(lesion_std, delta_hu, averaged)
    delta_src = resample_region_to_source(averaged.astype(np.float32), std_affine, shape, source_img.affine,
                                          region, order=1, cval=0.0, mode="constant")
    lesion_std = np.asarray(lesion_std, bool)
    outline = written_outline(lesion_std, std_affine, psf_floor_mm, contour_share, contour_spread)
    lesion_src = np.asarray(resample_region_to_source(outline, std_affine, shape, source_img.affine, region,
                                                      order=1, cval=0.0, mode="constant"), bool)
    if partial_label_share is not None:
        coverage = resample_region_to_source(source_voxel_average(lesion_std.astype(np.float32), std_affine,
                                                                  source_img.affine),
                                             std_affine, shape, source_img.affine, region, order=1, cval=0.0,
                                             mode="constant")
        lesion_src |= np.asarray(coverage) >= float(partial_label_share)
    return np.asarray(delta_src, dtype=np.float32), np.asarray(lesion_src, dtype=bool)


#: Shell (mm) of organ around a source-grid label whose median is the parenchyma (as ``ld_augment.evaluation``).
SOURCE_SHELL_MM = 6.0


@dataclass
class SourceView:
    """One lesion as ``write_back`` will put it into the source grid, on the source box around it."""

    before: np.ndarray  # HU before the lesion
    after: np.ndarray  # HU with it (partial volume rendered, no noise matching)
    lesion: np.ndarray  # its label there
    organ: np.ndarray  # the target organ there
    spacing: tuple[float, float, float]


def source_view(source_img: nib.Nifti1Image, std_affine: np.ndarray, delta_hu: np.ndarray, lesion_std: np.ndarray,
                organ_src: np.ndarray, *, partial_label_share: float | None = None,
                average_under_label: bool = False, psf_floor_mm: float = 0.0,
                contour_share: float | None = None, contour_spread: float = 0.0) -> SourceView | None:
    """One lesion's change and label as ``write_back`` renders them in the source grid, reading only the source
    box around it (the standardized arrays are cropped to the lesion first). None where the source grid holds
    no label voxel."""
    lesion_std = np.asarray(lesion_std, dtype=bool)
    touched = (np.asarray(delta_hu) != 0) | lesion_std
    if not touched.any():
        return None
    spacing = source_spacing(source_img)
    std_step = np.sqrt((np.asarray(std_affine, float)[:3, :3] ** 2).sum(axis=0))
    margin = [int(np.ceil(2.0 * max(spacing) / s)) + 1 for s in std_step]  # room for the averaging kernel
    box = ndimage.find_objects(touched.astype(np.uint8))[0]
    crop = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, touched.shape))
    crop_affine = np.asarray(std_affine, float).copy()
    crop_affine[:3, 3] = crop_affine[:3, :3] @ np.array([c.start for c in crop], float) + crop_affine[:3, 3]
    delta_c, lesion_c = np.asarray(delta_hu, np.float32)[crop], lesion_std[crop]
    found = ndimage.find_objects(((delta_c != 0) | lesion_c).astype(np.uint8))[0]
    std_box = VoxelBox(tuple(s.start for s in found), tuple(s.stop for s in found))  # type: ignore[arg-type]
    pad = max(2, int(np.ceil(SOURCE_SHELL_MM / min(spacing))) + 1)
    region = source_region_for_std_box(std_box, crop_affine, source_img.shape[:3], source_img.affine, pad=pad)
    if region.is_empty:
        return None
    delta_src, lesion_src = _in_source(source_img, crop_affine, delta_c, lesion_c, region, partial_label_share,
                                       average_under_label, psf_floor_mm, contour_share, contour_spread)
    if not lesion_src.any():
        return None
    old = np.asarray(source_img.dataobj[region.slices], dtype=np.float32)
    return SourceView(old, old + delta_src, lesion_src, np.asarray(organ_src[region.slices], dtype=bool), spacing)


def core_contrast(before: np.ndarray, after: np.ndarray, lesion: np.ndarray, organ: np.ndarray,
                  spacing: tuple[float, ...], organ_name: str = "organ") -> float | None:
    """A lesion's core (its deepest voxels: distance >= 0.4 of its depth) in ``after`` against the organ's
    parenchyma (``density.parenchyma_hu``: a fatty pancreas's soft tissue, not its fat) in a SOURCE_SHELL_MM
    shell around it in ``before``: the same rule in any grid, so the drawn and the written (``source_view``)
    contrast compare like with like. A small lesion on a coarse grid keeps only part of its drawn contrast (LIDC
    nodules at 1 and 3 mm: 95 % of those 4-6 mm keep >= 0.22). None without a lesion or an organ shell."""
    lesion = np.asarray(lesion, dtype=bool)
    if not lesion.any():
        return None
    depth_map = ndimage.distance_transform_edt(lesion, sampling=spacing)
    core = lesion & (depth_map >= 0.4 * float(depth_map.max()))
    outside = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    shell = np.asarray(organ, dtype=bool) & ~lesion & (outside <= SOURCE_SHELL_MM)
    if shell.sum() < 5:
        return None
    return float(np.median(np.asarray(after)[core]) - parenchyma_hu(np.asarray(before)[shell], organ_name))


def write_back(source_img: nib.Nifti1Image, std_affine: np.ndarray, delta_hu: np.ndarray,
               lesion_std: np.ndarray, *, hu_range: tuple[float, float] | None = None,
               organ_src: np.ndarray | None = None, rng: np.random.Generator | None = None,
               partial_label_share: float | None = None, average_under_label: bool = False,
               psf_floor_mm: float = 0.0, contour_share: float | None = None,
               contour_spread: float = 0.0) -> SourceWrite:
    """Add the standardized-space HU change `delta_hu` and map `lesion_std` into the source grid.

    A source voxel is labelled where its centre lies in the lesion, or with `contour_share` in a reader's contour
    of it (drawn where the lesion imaged with `psf_floor_mm` still shows that share of its contrast, one voxel
    out at most: LIDC's readers trace the foot of a thin-slice nodule's ramp, leaving a median 32 % of their label
    voxels below half its contrast at 1 mm); with `partial_label_share` also where at least that share of its
    extent is lesion (the partial-volume rim a reader contours with a nodule against aerated lung on a thick
    slice: 8-29 % below half contrast at 3 mm). With `average_under_label` the change is blurred under the label
    too (a lung nodule: on a thick-slice scan its edge voxels and its core carry the slice profile's partial
    volume, on a thin-slice one its edge's ramp straddles the surface); otherwise the lesion's own values stay
    under its label. `psf_floor_mm` (SCAN_PSF_FWHM_MM for an engine with ideal edges): the least blur, the
    scan's own where the source grid adds none.

    Only the source box covering the changed voxels (plus two voxels of padding for interpolation) is
    resampled; voxels whose rounded change is zero keep their exact stored value. With the target organ in
    the source grid (`organ_src`) and an `rng`, the lesion's noise is matched to the organ's there.
    """
    raw, slope, inter = _stored_values(source_img)
    lesion = np.zeros(raw.shape[:3], dtype=bool)
    changed = np.zeros(raw.shape[:3], dtype=bool)
    touched = (delta_hu != 0) | lesion_std
    if not touched.any():
        return SourceWrite(raw, lesion, changed, None)
    box = ndimage.find_objects(touched.astype(np.uint8))[0]
    std_box = VoxelBox(tuple(s.start for s in box), tuple(s.stop for s in box))  # type: ignore[arg-type]
    spacing = source_spacing(source_img)
    pad = 2 if organ_src is None else max(2, int(np.ceil(15.0 / min(spacing))))  # room to measure the organ
    region = source_region_for_std_box(std_box, std_affine, raw.shape, source_img.affine, pad=pad)
    if region.is_empty:
        return SourceWrite(raw, lesion, changed, None)
    delta_src, lesion_src = _in_source(source_img, std_affine, delta_hu, lesion_std, region,
                                       partial_label_share, average_under_label, psf_floor_mm, contour_share,
                                       contour_spread)
    old = raw[region.slices].astype(np.float64)
    new_hu = old * slope + inter + delta_src
    noise = None
    if organ_src is not None and rng is not None:
        organ_here = np.asarray(organ_src[region.slices], dtype=bool) & ~lesion_src
        new_hu, noise = match_source_noise(new_hu, lesion_src, organ_here, spacing, rng)
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
    return SourceWrite(raw, lesion, changed, region, noise)


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
