"""A nodule's edge in a thin-slice scan: procedural nodules written into a 1 mm scan against LIDC's real ones.

``bench_lidc_compare`` compares on a 3 mm grid, where the source grid's own partial volume blurs every edge;
on a thin-slice chest CT (the usual lung dataset) nothing does, and an engine that paints a well-defined margin
as a step writes a step. Real nodules never show one: the scanner's point-spread function spreads part of
their contrast past any contour. Measured here, at 1 mm, for each solid nodule (contrast >= 100 HU):

* ``outside``: the median share of the core's contrast in the voxels within 1 mm outside the label;
* ``inside``: the same in the label's outermost 1 mm (LIDC's readers contour the foot of the edge's ramp, about
  half a millimetre outside the half-contrast surface: 0.62 of the contrast there).

Real: LIDC nodules from scans with slices <= 1.25 mm (solid: texture rating 4-5), their VOIs resampled to
1 mm. Synthetic: the same LIDC nodules' ratings and boxes as reports (``bench_lidc_compare.matched_plan``),
synthesized by the real pipeline (procedural engines) into the shared CT crop resampled to 1 mm (a stand-in
for a thin-slice scan: its tissue is smoother than a native 1 mm scan, its grid is what matters here).

Baseline in the same run: the same requests with the lung edge's blur at the scanner's point-spread function
(``synthesize.LUNG_EDGE_FWHM_MM`` = ``write_back.SCAN_PSF_FWHM_MM``). Negative controls (must fail the target):
a ball written as a step, a ball blurred by 4 mm FWHM beyond its label, and a ball with the scanner's blur
beyond its label only (a step at the label: the behaviour before the ramp crossed the surface).
Target: the synthetic median ``outside`` and ``inside`` shares each within half the real interquartile range's
width of the real median (the real IQR inside, 0.51-0.92, is so wide that a step at the label sits at its end).
Exits 1 when a control passes or (with ``--strict``) the target is missed.

    python benchmarks/bench_edge_profile.py [--n 24] [--seed 0] [--strict]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lidc_compare as lidc  # noqa: E402  (the LIDC plan and paths are that benchmark's)

#: Slice thickness (mm) up to which an LIDC scan counts as thin-slice.
THIN_MM = 1.3
#: Least core contrast (HU) of a nodule whose edge is measured (solid nodules against aerated lung).
MIN_CONTRAST_HU = 100.0
#: Least label voxels at 1 mm (a 4 mm ball).
MIN_VOXELS = 30
SPACING = (1.0, 1.0, 1.0)


def edge_shares(ct: np.ndarray, lesion: np.ndarray, spacing=SPACING) -> tuple[float, float] | None:
    """(outside, inside): median share of the core's contrast within 1 mm outside / inside the label's surface;
    None for a nodule too small or too faint to have an edge to measure."""
    from ld_augment.evaluation.lesion_features import lung_mask_from_hu, signed_distance_mm

    if int(lesion.sum()) < MIN_VOXELS:
        return None
    sd = signed_distance_mm(lesion, spacing)
    lung = lung_mask_from_hu(ct, lesion, spacing)
    shell = lung & ~lesion & (sd >= -6.0) & (sd < -2.0)
    if shell.sum() < 20:
        return None
    parenchyma = float(np.median(ct[shell]))
    contrast = float(np.median(ct[lesion & (sd >= float(sd[lesion].max()) / 3.0)])) - parenchyma
    if contrast < MIN_CONTRAST_HU:
        return None
    share = (ct - parenchyma) / contrast
    outside = (sd >= -1.0) & (sd < 0.0) & (lung | lesion)
    inside = lesion & (sd < 1.0)
    return float(np.median(share[outside])), float(np.median(share[inside]))


def _crop(ct: np.ndarray, lesion: np.ndarray, margin: int = 10) -> tuple[np.ndarray, np.ndarray]:
    from ld_augment.engines.procedural.fields import mask_slices

    box = mask_slices(lesion, (margin,) * 3)
    return ct[box], lesion[box]


def thin_solid_nodules(root: Path):
    """Yield (row, image, mask) of every LIDC solid nodule (texture rating 4-5) on slices <= THIN_MM: the row holds
    its case, texture class and the margin / spiculation / lobulation ratings (what ``matched_plan`` reads)."""
    import nibabel as nib

    from ld_augment.evaluation.datasets import lidc_texture_class

    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    for row in table:
        case = f"{row['patient_id']}_R_{row['nodule_id']}"
        image, mask = root / "images" / f"{case}.nii.gz", root / "masks" / f"{case}.nii.gz"
        if not image.is_file() or not mask.is_file():
            continue
        texture = lidc_texture_class(float(row.get("Texture_value") or 5))
        img = nib.load(str(image))
        if texture != "solid" or float(max(nib.affines.voxel_sizes(img.affine))) > THIN_MM:
            continue
        yield ({"case": case, "texture_class": texture,
                **{f"rating_{k}": float(row[f"{k.title()}_value"]) for k in ("margin", "spiculation", "lobulation")}},
               img, nib.load(str(mask)))


def real_rows(root: Path) -> list[dict]:
    """Thin-slice solid LIDC nodules: their ratings (for the plan) and edge shares at 1 mm."""
    from ld_augment.evaluation.datasets import lung_beyond_end_slices
    from ld_augment.evaluation.lesion_features import to_common_spacing

    rows = []
    for row, img, mask in thin_solid_nodules(root):
        voi, voi_mask, _ = lung_beyond_end_slices(img, mask, SPACING)
        ct, (lesion,), _ = to_common_spacing(voi, [voi_mask], SPACING)
        shares = edge_shares(ct, lesion) if lesion.any() else None
        if shares is not None:
            rows.append({**row, "outside": shares[0], "inside": shares[1]})
    return rows


def thin_scene(work: Path) -> tuple[Path, Path]:
    """The shared CT crop and its TotalSegmentator map resampled to 1 mm (linear / nearest)."""
    import nibabel as nib
    from nibabel.processing import resample_to_output

    data = lidc._data_dir() / "ct"
    ct = resample_to_output(nib.load(str(data / "abdomen_ct_3mm_crop.nii.gz")), SPACING, order=1)
    seg = resample_to_output(nib.load(str(data / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz")), SPACING, order=0)
    ct_path, seg_path = work / "ct_1mm.nii.gz", work / "seg_1mm.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(np.asarray(ct.dataobj)).astype(np.int16), ct.affine), str(ct_path))
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.uint8), seg.affine), str(seg_path))
    return ct_path, seg_path


def written_lesions(results: list[dict]):
    """Yield (result, lesion mask) of every nodule ``lidc.synthesize`` wrote (label 2), failures skipped."""
    import nibabel as nib

    for res in results:
        if res["error"]:
            continue
        lesion = np.asarray(nib.load(str(res["label"])).dataobj) == 2
        if lesion.any():
            yield res, lesion


def synthetic_shares(results: list[dict]) -> list[tuple[float, float]]:
    import nibabel as nib

    out = []
    for res, lesion in written_lesions(results):
        ct = np.asarray(nib.load(str(res["ct"])).dataobj, dtype=np.float32)
        shares = edge_shares(*_crop(ct, lesion))
        if shares is not None:
            out.append(shares)
    return out


def runs_with(module, attribute: str, settings: list[tuple[str, float]], plan: list[dict], scene: tuple[Path, Path],
              work: Path, seed: int, measure) -> dict[str, list]:
    """The same plan synthesized once per (name, value) of ``module.attribute`` (restored afterwards), each run
    measured by ``measure(results)``: the current setting and a same-run baseline."""
    before = getattr(module, attribute)
    runs = {}
    for name, value in settings:
        setattr(module, attribute, value)
        try:
            t1 = time.perf_counter()
            runs[name] = measure(lidc.synthesize(plan, *scene, work / name.split()[0], seed))
            print(f"{name}: {len(runs[name])} of {len(plan)} nodules measured ({time.perf_counter() - t1:.0f} s)")
        finally:
            setattr(module, attribute, before)
    return runs


def controls(ct_path: Path, seg_path: Path) -> dict[str, tuple[float, float] | None]:
    """A +800 HU ball in the right lower lobe written as a step, blurred by 4 mm FWHM beyond its label, and
    with the scanner's blur beyond its label only."""
    import nibabel as nib
    from scipy import ndimage

    from ld_augment.organs.masks import organ_mask
    from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM, source_image_like, write_back

    img = nib.load(str(ct_path))
    lung = organ_mask(np.asarray(nib.load(str(seg_path)).dataobj), "lung_lower_lobe_right", version="v2")
    deep = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(lung))), lung.shape)
    grid = np.indices(lung.shape)
    ball = sum((grid[a] - deep[a] - 0.3) ** 2 for a in range(3)) <= 5.0**2
    step = np.where(ball, 800.0, 0.0).astype(np.float32)
    blurred = np.where(ball, step, ndimage.gaussian_filter(step, 4.0 / 2.355)).astype(np.float32)
    out = {}
    for name, delta, floor in (("step (no point-spread function)", step, 0.0),
                               ("blurred 4 mm beyond the label", blurred, 0.0),
                               ("scanner's blur beyond the label only", step, SCAN_PSF_FWHM_MM)):
        written = write_back(img, img.affine, delta, ball, psf_floor_mm=floor)
        ct = np.asarray(source_image_like(img, written.ct_raw).dataobj, dtype=np.float32)  # HU, scaled or not
        out[name] = edge_shares(*_crop(ct, written.lesion))
    return out


def thin_bench_setup(name: str, doc: str, n: int, argv=None) -> tuple[argparse.Namespace, Path | None]:
    """The thin-slice benchmarks' command line (``--n``, ``--seed``, ``--strict``) and LIDC folder (None, said on
    stderr, where it is missing)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=n, help=f"synthetic nodules per run (default {n})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed, too")
    args = parser.parse_args(argv)
    root = lidc._data_dir() / "lesions" / "lidc_nodules"
    if not (root / "metadata.csv").is_file():
        print(f"{name}: missing {root / 'metadata.csv'} (set LD_TEST_DATA)", file=sys.stderr)
        return args, None
    return args, root


def main(argv=None) -> int:
    args, root = thin_bench_setup("bench_edge_profile", __doc__, 24, argv)
    if root is None:
        return 2
    import ld_augment.pipeline.synthesize as synthesize_module
    from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM

    t0 = time.perf_counter()
    real = real_rows(root)
    quartiles = {side: [float(v) for v in np.percentile([r[side] for r in real], [25, 50, 75])]
                 for side in ("outside", "inside")}
    # the target band: within half the real IQR's width of the real median (the IQR itself is wide inside:
    # a step at the label, 0.93, sits at its upper end)
    band = {side: (q2 - (q3 - q1) / 2, q2 + (q3 - q1) / 2) for side, (q1, q2, q3) in quartiles.items()}
    print(f"real: {len(real)} solid LIDC nodules on <= {THIN_MM:g} mm slices, at 1 mm ({time.perf_counter() - t0:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="ld_edge_") as tmp:
        work = Path(tmp)
        ct_path, seg_path = thin_scene(work)
        plan = lidc.matched_plan(args.n, real, args.seed, lidc.lidc_boxes(root))
        baseline = f"baseline (scanner's {SCAN_PSF_FWHM_MM:g} mm)"
        settings = [("current", synthesize_module.LUNG_EDGE_FWHM_MM), (baseline, SCAN_PSF_FWHM_MM)]
        runs = runs_with(synthesize_module, "LUNG_EDGE_FWHM_MM", settings, plan, (ct_path, seg_path), work,
                         args.seed + 1000, synthetic_shares)
        ctrl = controls(ct_path, seg_path)

    def in_band(shares: tuple[float, float] | None) -> bool:
        return shares is not None and all(lo <= v <= hi for v, (lo, hi) in zip(shares, band.values()))

    print(f"\n{'set':38s} {'n':>4s} {'outside: median':>16s} {'inside: median':>15s}")
    print(f"{'LIDC, thin slices':38s} {len(real):4d} {np.median([r['outside'] for r in real]):16.3f} "
          f"{np.median([r['inside'] for r in real]):15.3f}   (target bands {band['outside'][0]:.3f}-"
          f"{band['outside'][1]:.3f} / {band['inside'][0]:.3f}-{band['inside'][1]:.3f})")
    medians = {}
    for name, shares in runs.items():
        medians[name] = ((float(np.median([s[0] for s in shares])), float(np.median([s[1] for s in shares])))
                         if shares else None)
        shown = (f"{medians[name][0]:16.3f} {medians[name][1]:15.3f}" if medians[name] else f"{'-':>16s} {'-':>15s}")
        print(f"{name:38s} {len(shares):4d} {shown}")
    ok = True
    print("\ncontrols (each must FAIL the target):")
    for name, shares in ctrl.items():
        passed = in_band(shares)
        ok &= not passed
        shown = "-" if shares is None else f"outside {shares[0]:.3f}, inside {shares[1]:.3f}"
        print(f"  [{'PASSED: BAD' if passed else 'failed, good'}] {name}: {shown}")
    met = in_band(medians["current"])

    def fmt(pair: tuple[float, float] | None) -> str:
        return "-" if pair is None else f"{pair[0]:.3f} / {pair[1]:.3f}"

    print(f"\ntarget: synthetic median outside and inside shares within half an IQR of the real medians: {'met' if met else 'MISS'} "
          f"({fmt(medians['current'])}; baseline {fmt(medians[baseline])})")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if ok and (met or not args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
