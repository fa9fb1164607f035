"""A lung nodule's shape on a thin-slice grid: procedural nodules written into a 1 mm scan against LIDC's.

``bench_lidc_compare`` compares shapes on a 3 mm grid, which rounds off every bump smaller than a voxel; on a
thin-slice chest CT (the usual lung dataset) the label a segmenter learns from is the 1 mm mask itself. Measured
here, at 1 mm, per solid nodule (``ld_augment.evaluation.lesion_features``): sphericity, convexity and
``surface_roughness`` (voxels a one-voxel opening removes plus those a closing adds, per lesion voxel: notches
and single-voxel bumps, which neither of the other two sees), by size band (equivalent diameter).

Real: LIDC nodules from scans with slices <= 1.3 mm (solid: texture rating 4-5), masks resampled to 1 mm (the
readers' contours). Synthetic: the same LIDC nodules' ratings and boxes as reports (``bench_lidc_compare
.matched_plan``), synthesized by the real pipeline (procedural engines) into the shared CT crop resampled to
1 mm (``bench_edge_profile.thin_scene``).

Baseline in the same run: the same requests with the lung nodules' fine bumps smoothed over 1.5 mm as they
were (``mask.LUNG_FINE_BUMP_MIN_MM`` = 1.5; now the 0.7 voxel floor, under the reader's contour). Negative
controls (each must fail the target): ideal voxelized balls (too smooth) and balls with a one-voxel random
surface (too ragged), both at the synthetic nodules' sizes.
Target: in the smallest band (< 7 mm, half of LIDC's thin-slice solid nodules) and over all nodules, the
synthetic median of each feature inside the real interquartile range. Exits 1 when a control passes or (with
``--strict``) the target is missed.

    python benchmarks/bench_thin_slice_shape.py [--n 40] [--seed 0] [--strict]
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_edge_profile as edge  # noqa: E402  (its 1 mm scene and thin-slice selection)
import bench_lidc_compare as lidc  # noqa: E402  (the LIDC plan and paths are that benchmark's)

SPACING = (1.0, 1.0, 1.0)
FEATURES = ("sphericity", "convexity", "surface_roughness")
#: Size bands (equivalent diameter, mm) the features are reported in; the first one is also a target.
BANDS = ((0.0, 7.0), (7.0, 10.0), (10.0, 100.0))
#: Least label voxels at 1 mm whose shape is measured (a 3.4 mm ball).
MIN_VOXELS = 20


def shape_row(lesion: np.ndarray) -> dict[str, float]:
    """Equivalent diameter and the three shape features of one 1 mm mask."""
    from ld_augment.evaluation.lesion_features import shape_features, surface_roughness

    row = {k: v for k, v in shape_features(lesion, SPACING).items() if k in FEATURES}
    row["surface_roughness"] = surface_roughness(lesion)
    row["equivalent_diameter_mm"] = float((6.0 * lesion.sum() / math.pi) ** (1 / 3))
    return row


def real_rows(root: Path) -> list[dict]:
    """Thin-slice solid LIDC nodules: their ratings (for the plan) and shape at 1 mm."""
    from ld_augment.evaluation.lesion_features import to_common_spacing

    rows = []
    for row, img, mask in edge.thin_solid_nodules(root):
        _, (lesion,), _ = to_common_spacing(img, [mask], SPACING)
        if lesion.sum() >= MIN_VOXELS:
            rows.append({**row, **shape_row(lesion)})
    return rows


def synthetic_rows(results: list[dict]) -> list[dict]:
    return [shape_row(lesion) for _, lesion in edge.written_lesions(results) if lesion.sum() >= MIN_VOXELS]


def control_rows(sizes: list[float], seed: int) -> dict[str, list[dict]]:
    """Ideal voxelized balls, and balls whose surface is drawn from one-voxel noise, of the given diameters."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {"ideal balls": [], "balls with a one-voxel random surface": []}
    for d in sizes:
        r = d / 2.0
        n = int(math.ceil(r)) + 4
        grid = np.indices((2 * n + 1,) * 3) - n + rng.uniform(-0.5, 0.5, 3)[:, None, None, None]
        radius = np.sqrt((grid**2).sum(axis=0))
        out["ideal balls"].append(shape_row(radius <= r))
        notched = radius + rng.uniform(-1.0, 1.0, radius.shape) <= r
        out["balls with a one-voxel random surface"].append(shape_row(notched))
    return out


def band(rows: list[dict], lo: float, hi: float) -> list[dict]:
    return [r for r in rows if lo <= r["equivalent_diameter_mm"] < hi]


def medians(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.nanmedian([r[k] for r in rows])) if rows else math.nan for k in FEATURES}


def inside(rows: list[dict], real: list[dict]) -> dict[str, bool]:
    """Per feature: the rows' median inside the real rows' interquartile range."""
    got = medians(rows)
    out = {}
    for k in FEATURES:
        q1, q3 = np.nanpercentile([r[k] for r in real], [25, 75])
        out[k] = bool(np.isfinite(got[k]) and q1 <= got[k] <= q3)
    return out


def main(argv=None) -> int:
    args, root = edge.thin_bench_setup("bench_thin_slice_shape", __doc__, 40, argv)
    if root is None:
        return 2
    import ld_augment.engines.procedural.mask as mask_module

    t0 = time.perf_counter()
    real = real_rows(root)
    print(f"real: {len(real)} solid LIDC nodules on <= {edge.THIN_MM:g} mm slices, at 1 mm "
          f"({time.perf_counter() - t0:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="ld_shape_") as tmp:
        work = Path(tmp)
        ct_path, seg_path = edge.thin_scene(work)
        plan = lidc.matched_plan(args.n, real, args.seed, lidc.lidc_boxes(root))
        settings = [("current", mask_module.LUNG_FINE_BUMP_MIN_MM), ("baseline (1.5 mm floor)", 1.5)]
        runs = edge.runs_with(mask_module, "LUNG_FINE_BUMP_MIN_MM", settings, plan, (ct_path, seg_path), work,
                              args.seed + 1000, synthetic_rows)
    ctrl = control_rows([r["equivalent_diameter_mm"] for r in runs["current"]], args.seed)

    sets = {"LIDC, thin slices": real, **runs, **{f"CONTROL {k}": v for k, v in ctrl.items()}}
    print("\nmedians at 1 mm by size band (real: median [IQR])")
    for lo, hi in BANDS:
        label = f"{lo:g}-{hi:g} mm" if hi < 100 else f">= {lo:g} mm"
        print(f"\n{label:12s} {'n':>4s} " + " ".join(f"{k:>26s}" for k in FEATURES))
        for name, rows in sets.items():
            part = band(rows, lo, hi)
            if name == "LIDC, thin slices":
                cells = []
                for k in FEATURES:
                    q1, q2, q3 = (np.nanpercentile([r[k] for r in part], [25, 50, 75]) if part else [math.nan] * 3)
                    cells.append(f"{q2:.3f} [{q1:.3f}, {q3:.3f}]")
            else:
                cells = [f"{v:.3f}" for v in medians(part).values()]
            print(f"  {name:38s} {len(part):4d} " + " ".join(f"{c:>26s}" for c in cells))

    def verdict(rows: list[dict]) -> dict[str, bool]:
        small = inside(band(rows, *BANDS[0]), band(real, *BANDS[0]))
        overall = inside(rows, real)
        return ({f"{k} (< {BANDS[0][1]:g} mm)": v for k, v in small.items()}
                | {f"{k} (all)": v for k, v in overall.items()})

    ok = True
    print("\ncontrols (each must FAIL the target: some median outside the real IQR):")
    for name, rows in ctrl.items():
        v = verdict(rows)
        passed = all(v.values())
        ok &= not passed
        missed = ", ".join(k for k, good in v.items() if not good) or "none"
        print(f"  [{'PASSED: BAD' if passed else 'failed, good'}] {name}: outside the real IQR: {missed}")
    print("\ntarget: synthetic medians inside the real IQR (smallest band and all nodules)")
    met = True
    for name in runs:
        v = verdict(runs[name])
        missed = [k for k, good in v.items() if not good]
        print(f"  {name}: {len(v) - len(missed)}/{len(v)}" + (f" (outside: {', '.join(missed)})" if missed else ""))
        if name == "current":
            met = not missed
    print(f"target {'met' if met else 'MISS'}; total {time.perf_counter() - t0:.0f} s")
    return 0 if ok and (met or not args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
