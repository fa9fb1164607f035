"""Per-lesion features a radiologist would look at: size, shape, density, edge and label honesty.

Every feature is measured in mm and HU on a grid of known spacing, so synthetic and real lesions can be
compared once both are resampled to one common spacing (``to_common_spacing``). Shape comes from a
marching-cubes surface of the slightly smoothed mask (the raw voxel staircase would make every lesion look
rough and faceted); intensity features compare the lesion with its organ's parenchyma in a shell around it.

Features (keys of the dict ``measure_lesion`` returns; NaN where a lesion is too small or low-contrast to say):

* ``volume_mm3``, ``equivalent_diameter_mm`` ((6V/pi)^(1/3)), ``longest_axial_diameter_mm`` (largest in-plane
  Feret diameter over the axial slices; the array's third axis is axial).
* ``sphericity`` (pi^(1/3) (6V)^(2/3) / A: 1 for a ball), ``convexity`` (volume / convex-hull volume),
  ``flat_face_fraction`` (share of the surface on axis-aligned planes at the lesion's extreme: what a
  box-clipped lesion has and a ball does not).
* ``parenchyma_hu`` (median of organ voxels in a shell around the lesion), ``core_hu`` (median of the deep
  core), ``contrast_hu`` (core - parenchyma), ``mean_hu``.
* ``heterogeneity_std``, ``heterogeneity_iqr`` (inside the eroded lesion), ``heterogeneity_ratio`` (lesion
  IQR / shell IQR), ``fine_texture_ratio`` (high-pass std, lesion / shell: the noise grain).
* ``margin_width_mm``: 10-90 % rise of the HU profile across the surface (profile = median HU per signed
  distance bin, made monotone by isotonic regression): ~1 voxel for a sharp edge, wider for a blurred one; NaN
  for a lesion under ``MIN_SHAPE_VOXELS`` voxels (all edge: 1-3 voxels hold no core to rise to).
* ``inside_organ_fraction`` (share of the voxels just outside the lesion that are organ: 1 inside it, ~0.5 half
  out; works whether or not the organ mask includes the lesion), ``visible_diameter_ratio`` (diameter of the region past half the core's contrast
  / label diameter), ``label_below_half_fraction`` (label voxels short of half the contrast), ``components``.

Not in that dict: ``surface_roughness`` (voxel-scale notches and bumps of the raw mask, which the smoothed surface
above deliberately ignores; it depends on the grid, so it is compared at one spacing, as on a thin-slice grid by
``benchmarks/bench_thin_slice_shape.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.errors import InputError
from ld_augment.io.standardize import resample_to_grid, standardize_image

FEATURES = (
    "equivalent_diameter_mm", "longest_axial_diameter_mm", "sphericity", "convexity", "flat_face_fraction",
    "contrast_hu", "core_hu", "parenchyma_hu", "heterogeneity_std", "heterogeneity_iqr", "heterogeneity_ratio",
    "fine_texture_ratio", "margin_width_mm", "inside_organ_fraction", "visible_diameter_ratio",
    "label_below_half_fraction", "components",
)
#: Shell around the lesion (mm) whose organ voxels are the parenchyma reference.
SHELL_MM = 5.0
#: Surface normals within this angle (degrees) of an axis count as facing it (flat-face fraction).
FLAT_ANGLE_DEG = 10.0
#: Smallest lesion (voxels) whose shape features are measured.
MIN_SHAPE_VOXELS = 4
#: A lesion's core, whose median is its ``core_hu``: the voxels at least this share of its depth inside.
CORE_DEPTH_SHARE = 0.4


def to_common_spacing(ct: nib.spatialimages.SpatialImage, masks: Sequence[nib.spatialimages.SpatialImage],
                      spacing: Sequence[float]) -> tuple[np.ndarray, list[np.ndarray], tuple[float, float, float]]:
    """CT and binary masks reoriented to RAS and resampled to ``spacing`` (mm), the masks at the 50 % level of
    their linear interpolation (nearest neighbour shifts small lesions by half a voxel and chips them).

    Going to a coarser grid, the CT is first averaged over the new voxel's extent (a Gaussian of that FWHM,
    as ``pipeline.write_back`` renders partial volume), so a thin-slice scan compared at 3 mm looks as a 3 mm
    acquisition does; point-sampling it kept thin-slice edges and noise (LIDC at 3 mm: margins 0.6 mm sharper
    and internal texture 1.5x rougher than any 3 mm scan shows).
    """
    ct = _anti_aliased(ct, spacing)
    std_ct = standardize_image(ct, spacing, is_label=False)
    ct_arr = np.asarray(std_ct.dataobj, dtype=np.float32)
    out = []
    for mask in masks:
        # onto the CT's grid, 0 beyond the mask's own volume: ``standardize_image`` carries an image's edge value
        # on past it (right for a CT), and a mask touching its edge (LIDC VOIs end at the nodule's last slice)
        # grew by up to a voxel there: 4 slices of 2.5 mm (10 mm) came out 12 mm deep at 3 mm
        if tuple(mask.shape[:3]) != tuple(ct.shape[:3]):
            raise InputError(f"mask grid {tuple(mask.shape[:3])} differs from the CT's {tuple(ct.shape[:3])}")
        binary = nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.float32), mask.affine)
        out.append(np.asarray(resample_to_grid(binary, ct_arr.shape, std_ct.affine, is_label=False).dataobj) >= 0.5)
    sp = tuple(float(s) for s in np.abs(np.diag(std_ct.affine)[:3]))
    return ct_arr, out, sp  # type: ignore[return-value]


def _anti_aliased(img: nib.spatialimages.SpatialImage, spacing: Sequence[float]) -> nib.spatialimages.SpatialImage:
    """``img`` smoothed along each voxel axis that ``spacing`` (RAS axes, mm) makes coarser; unchanged otherwise."""
    affine = np.asarray(img.affine, dtype=np.float64)
    world_axis = np.argmax(np.abs(affine[:3, :3]), axis=0)  # the RAS axis each voxel axis runs along
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    target = np.asarray([float(s) for s in spacing], dtype=np.float64)[world_axis]
    sigma = np.sqrt(np.clip(target**2 - sizes**2, 0.0, None)) / 2.355 / sizes
    if float(sigma.max()) < 0.25:
        return img
    data = ndimage.gaussian_filter(np.asarray(img.dataobj, dtype=np.float32), sigma, mode="nearest")
    return nib.Nifti1Image(data, affine)


def count_components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1])


def lesion_components(label: np.ndarray, min_voxels: int = 1) -> list[np.ndarray]:
    """Connected components (26-connectivity) of a lesion mask with at least ``min_voxels`` voxels."""
    lab, n = ndimage.label(label, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())
    return [lab == i for i in range(1, n + 1) if sizes[i] >= min_voxels]


def signed_distance_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) to the mask's surface, positive inside, negative outside; the surface lies half a voxel
    beyond the outermost voxel centres (so a voxel at the edge is at +h, its outside neighbour at -h)."""
    sp = tuple(float(s) for s in spacing)
    half = 0.5 * float(np.mean(sp))
    inside = ndimage.distance_transform_edt(mask, sampling=sp)
    outside = ndimage.distance_transform_edt(~mask, sampling=sp)
    return np.where(mask, inside - half, -(outside - half)).astype(np.float32)


def _surface(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(vertices mm, faces, vertex normals) of the smoothed mask's 0.5 surface, or None when too small."""
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 3)
    smooth = ndimage.gaussian_filter(padded, 0.5)  # rounds the voxel staircase; keeps real flat faces flat
    if smooth.max() <= 0.5:
        return None
    verts, faces, normals, _ = measure.marching_cubes(smooth, 0.5, spacing=tuple(float(s) for s in spacing))
    return verts, faces, normals


def _mesh_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    tri = verts[faces]
    return float(abs(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)


def shape_features(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Sphericity, convexity and flat-face fraction of one lesion mask (NaN below MIN_SHAPE_VOXELS)."""
    from scipy.spatial import ConvexHull, QhullError
    from skimage import measure

    out = {"sphericity": math.nan, "convexity": math.nan, "flat_face_fraction": math.nan}
    if int(mask.sum()) < MIN_SHAPE_VOXELS:
        return out
    surface = _surface(mask, spacing)
    if surface is None:
        return out
    verts, faces, _ = surface
    area = float(measure.mesh_surface_area(verts, faces))
    volume = _mesh_volume(verts, faces)
    if area <= 0 or volume <= 0:
        return out
    out["sphericity"] = float(math.pi ** (1 / 3) * (6.0 * volume) ** (2 / 3) / area)
    try:
        out["convexity"] = float(min(volume / ConvexHull(verts).volume, 1.0))
    except QhullError:
        pass
    tri = verts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    tri_area = 0.5 * np.linalg.norm(cross, axis=1)
    unit = cross / np.maximum(2.0 * tri_area, 1e-12)[:, None]
    centres = tri.mean(axis=1)
    cos_lim = math.cos(math.radians(FLAT_ANGLE_DEG))
    flat = np.zeros(len(faces), bool)
    for axis in range(3):
        tol = 0.5 * float(spacing[axis])
        lo, hi = centres[:, axis].min(), centres[:, axis].max()
        facing = np.abs(unit[:, axis]) >= cos_lim
        flat |= facing & ((centres[:, axis] <= lo + tol) | (centres[:, axis] >= hi - tol))
    out["flat_face_fraction"] = float(tri_area[flat].sum() / tri_area.sum())
    return out


def surface_roughness(mask: np.ndarray) -> float:
    """Voxel-scale raggedness: voxels a one-voxel opening removes plus those a one-voxel closing adds, per lesion
    voxel. Sphericity and convexity weigh lobes; this sees notches and single-voxel bumps, which a surface drawn
    from near-white noise has and an imaged nodule does not. Depends on the grid: compare at one spacing."""
    mask = np.pad(np.asarray(mask, bool), 2)
    if not mask.any():
        return math.nan
    opened = ndimage.binary_opening(mask)
    closed = ndimage.binary_closing(mask)
    return float(((mask & ~opened).sum() + (closed & ~mask).sum()) / mask.sum())


def core_mask(lesion: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """The lesion's core (``core_hu`` is its median) given its signed distance ``sd`` (``signed_distance_mm``)."""
    return lesion & (sd >= CORE_DEPTH_SHARE * float(sd[lesion].max()))


def longest_axial_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest in-plane Feret diameter (mm) over the axial slices (third array axis), pixel corners included."""
    from scipy.spatial import ConvexHull, QhullError

    best = 0.0
    sx, sy = float(spacing[0]), float(spacing[1])
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        pts = np.argwhere(mask[:, :, k]).astype(np.float64)
        pts = (pts[:, None, :] + corners[None]).reshape(-1, 2) * (sx, sy)
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:
            pass
        diff = pts[:, None, :] - pts[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1)).max()))
    return best


def _iqr(values: np.ndarray) -> float:
    q75, q25 = np.percentile(values, [75, 25])
    return float(q75 - q25)


def margin_width_mm(ct: np.ndarray, sd: np.ndarray, lesion: np.ndarray, organ: np.ndarray, spacing: Sequence[float],
                    outer_hu: float, core_hu: float, shell_mm: float = SHELL_MM) -> float:
    """10-90 % rise distance (mm) of the lesion's radial HU profile (median per signed-distance bin, monotone).

    NaN when the lesion does not differ from its surroundings (no rise to measure)."""
    from sklearn.isotonic import IsotonicRegression

    contrast = core_hu - outer_hu
    if not np.isfinite(contrast) or abs(contrast) < 1e-6:
        return math.nan
    use = (lesion | (organ & (sd >= -shell_mm))) & (sd >= -shell_mm)
    d = sd[use]
    v = (ct[use] - outer_hu) / contrast  # 0 = parenchyma, 1 = core
    step = 0.5 * float(min(spacing))
    bins = np.floor(d / step).astype(int)
    keys, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    if keys.size < 3:
        return math.nan
    centres = np.array([float(np.mean(d[inverse == i])) for i in range(keys.size)])
    medians = np.array([float(np.median(v[inverse == i])) for i in range(keys.size)])
    fit = IsotonicRegression(increasing=True).fit(centres, medians, sample_weight=counts).predict(centres)
    lo, hi = float(fit[0]), float(fit[-1])
    if hi - lo < 0.5:  # the profile never rises from parenchyma to core: no edge to measure
        return math.nan
    levels = lo + np.array([0.1, 0.9]) * (hi - lo)
    crossings = []
    for level in levels:
        idx = int(np.argmax(fit >= level))
        if idx == 0:
            crossings.append(centres[0])
            continue
        x0, x1, y0, y1 = centres[idx - 1], centres[idx], fit[idx - 1], fit[idx]
        crossings.append(x0 + (level - y0) * (x1 - x0) / max(y1 - y0, 1e-9))
    return float(crossings[1] - crossings[0])


def _high_pass(ct: np.ndarray, region: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``ct`` minus its local mean taken over ``region`` only (normalized convolution), so the lesion's edge
    does not leak into the texture of either side."""
    weight = region.astype(np.float32)
    local = ndimage.gaussian_filter(ct * weight, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-6)
    return ct - local


def _crop(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - m, 0), min(int(i.max()) + m + 1, n))
                 for i, m, n in zip(idx, margin, mask.shape))


def measure_lesion(ct: np.ndarray, lesion: np.ndarray, organ: np.ndarray, spacing: Sequence[float], *,
                   components: int | None = None, shell_mm: float = SHELL_MM) -> dict[str, float]:
    """All features of one lesion (bool mask, may hold several components) in ``ct`` (HU) beside ``organ``.

    Arrays share one grid of ``spacing`` mm; ``organ`` is the organ the lesion belongs to (the lesion may or may
    not be part of it). ``components`` overrides the count of the lesion's connected components.
    """
    ct = np.asarray(ct, dtype=np.float32)
    lesion = np.asarray(lesion, dtype=bool)
    organ = np.asarray(organ, dtype=bool)
    if not (ct.shape == lesion.shape == organ.shape):
        raise InputError(f"CT {ct.shape}, lesion {lesion.shape} and organ {organ.shape} must share one grid")
    if not lesion.any():
        raise InputError("empty lesion mask: nothing to measure")
    sp = tuple(float(s) for s in spacing)
    margin = [int(math.ceil((shell_mm + 4.0) / s)) + 2 for s in sp]
    region = _crop(lesion, margin)
    ct, lesion, organ = ct[region], lesion[region], organ[region]
    voxel = float(np.prod(sp))
    n = int(lesion.sum())
    volume = n * voxel
    feats: dict[str, float] = {
        "volume_mm3": volume,
        "equivalent_diameter_mm": float((6.0 * volume / math.pi) ** (1 / 3)),
        "longest_axial_diameter_mm": longest_axial_diameter_mm(lesion, sp),
        "components": float(components if components is not None else count_components(lesion)),
    }
    feats.update(shape_features(lesion, sp))

    sd = signed_distance_mm(lesion, sp)
    # judged by the lesion's surroundings, so it reads the same whether the organ label includes the lesion
    # (a segmentation of the organ) or not (nnU-Net labels, where the lesion label replaces the organ's)
    ring = (sd < 0) & (sd >= -float(max(sp)))
    feats["inside_organ_fraction"] = float(organ[ring].mean()) if ring.any() else math.nan
    shell = organ & ~lesion & (sd >= -shell_mm)
    core = core_mask(lesion, sd)
    interior = lesion & (sd > 0.6 * float(np.mean(sp)))
    if interior.sum() < 3:
        interior = lesion
    parenchyma = float(np.median(ct[shell])) if shell.sum() >= 5 else math.nan
    core_hu = float(np.median(ct[core]))
    feats.update({
        "parenchyma_hu": parenchyma,
        "core_hu": core_hu,
        "contrast_hu": core_hu - parenchyma,
        "mean_hu": float(ct[lesion].mean()),
        "heterogeneity_std": float(ct[interior].std()),
        "heterogeneity_iqr": _iqr(ct[interior]),
    })
    nan_keys = ("heterogeneity_ratio", "fine_texture_ratio", "margin_width_mm", "visible_diameter_ratio",
                "label_below_half_fraction")
    feats.update({k: math.nan for k in nan_keys})
    if not np.isfinite(parenchyma):
        return feats
    shell_iqr = _iqr(ct[shell])
    feats["heterogeneity_ratio"] = feats["heterogeneity_iqr"] / shell_iqr if shell_iqr > 0 else math.nan
    shell_hp = float(_high_pass(ct, shell)[shell].std())
    inner_hp = float(_high_pass(ct, interior)[interior].std())
    feats["fine_texture_ratio"] = inner_hp / shell_hp if shell_hp > 0 else math.nan
    if n >= MIN_SHAPE_VOXELS:  # a lesion of 1-3 voxels is all edge: no margin to tell from its core
        feats["margin_width_mm"] = margin_width_mm(ct, sd, lesion, organ, sp, parenchyma, core_hu, shell_mm)
    contrast = core_hu - parenchyma
    if abs(contrast) > 0:
        smooth = ndimage.gaussian_filter(ct, 0.5)  # a little denoising; a 3-voxel median erases small lesions
        past = (smooth - (parenchyma + 0.5 * contrast)) * np.sign(contrast) > 0
        feats["label_below_half_fraction"] = float((~past[lesion]).mean())
        near = (lesion | shell) & past
        lab, _ = ndimage.label(near, structure=np.ones((3, 3, 3)))
        keep = np.unique(lab[core & (lab > 0)])
        visible = np.isin(lab, keep[keep > 0])
        feats["visible_diameter_ratio"] = float((visible.sum() / n) ** (1 / 3))
    return feats


def measure_case(ct: np.ndarray, lesion_label: np.ndarray, organ: np.ndarray, spacing: Sequence[float], *,
                 per_component: bool = True, min_voxels: int = 2) -> list[dict[str, float]]:
    """Features of every lesion of one case: one per connected component (``per_component``), or the whole
    label as one lesion. Components smaller than ``min_voxels`` are skipped (specks carry no shape)."""
    lesion_label = np.asarray(lesion_label, dtype=bool)
    total = count_components(lesion_label)
    if not per_component:
        return [measure_lesion(ct, lesion_label, organ, spacing, components=total)] if lesion_label.any() else []
    out = []
    for comp in lesion_components(lesion_label, min_voxels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(measure_lesion(ct, comp, organ, spacing, components=total))
    return out


def lung_mask_from_hu(ct: np.ndarray, lesion: np.ndarray, spacing: Sequence[float], threshold_hu: float = -400.0) -> np.ndarray:
    """Lung around a nodule where no lung label exists: aerated voxels closed over vessels (3 mm), plus the nodule."""
    air = np.asarray(ct) < threshold_hu
    radius = [max(1, int(round(3.0 / float(s)))) for s in spacing]
    structure = np.zeros([2 * r + 1 for r in radius], bool)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    structure[sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius)) <= 1.0] = True
    closed = ndimage.binary_closing(np.pad(air, [(r, r) for r in radius], mode="edge"), structure)
    closed = closed[tuple(slice(r, -r) for r in radius)]
    return closed | np.asarray(lesion, dtype=bool)


def feature_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The FEATURES present in ``rows`` (in canonical order)."""
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    return [f for f in FEATURES if f in present]
