"""Would a radiologist accept the procedural lesions? Every quality-gate item, checked on real outputs, with
negative controls that must fail.

Runs the real pipeline (``preprocess_case`` + ``synthesize_case``, offline reports, procedural engines) for
``--seeds`` seeds of every lesion type of the realism audit on the shared real CT crop (3 mm, non-contrast,
TotalSegmentator v2) and checks each written lesion in the SOURCE grid (the grid nnU-Net trains on) with the
gate's own measurements (``ld_augment.engines.quality.lesion_quality``; flat faces on the 1 mm standardized
mask, where a box face is a face and not a voxel staircase):

* gate failures written as ok: lesions synthesis.json calls ok (or, for a revision without a gate, every
  written lesion) that fail the check here (target 0);
* core within 20 HU of the report's CT value (target >= 95 % of lesions);
* fraction inside the organ for non-exophytic lesions (target >= 0.8 for every one);
* half-contrast / label equivalent diameter (target >= 0.9 for every lesion with measurable contrast);
* flat-face fraction (target <= 0.15 for every lesion);
* crashes, and lesions the gate dropped (recorded with their reasons).

Negative controls, built on the same CT's liver in the source grid, must FAIL the same check: an axis-aligned
+60 HU box with a 45 HU halo, a label with no contrast (invisible lesion), a fat core, a lesion floating
mostly outside its organ, and one drawn inside a structure already as dark as itself (no edge of its own).
The benchmark exits 1 when a control passes or a target is missed.

Baseline in the same run: ``--baseline-ref REV`` generates the SAME cases with the package as of git revision
REV (``git archive`` into a temporary folder, run in a subprocess) and measures them with the same code.

    python benchmarks/bench_realism.py [--seeds 3] [--types hcc rcc ...] [--baseline-ref e21dad5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

#: name -> (organ, lesion type): the realism audit's types
TYPES = {
    "hcc": ("liver", "hepatocellular carcinoma"),
    "liver_met": ("liver", "liver metastasis"),
    "liver_cyst": ("liver", "liver cyst"),
    "hemangioma": ("liver", "hepatic hemangioma"),
    "rcc": ("kidney_left", "renal cell carcinoma"),
    "kidney_cyst": ("kidney_right", "renal cyst"),
    "pancreas_tumor": ("pancreas", "pancreatic tumor"),
    "spleen_met": ("spleen", "splenic metastasis"),
    "gastric_cancer": ("stomach", "gastric cancer"),
}
TARGETS = {"written_ok_failures": 0, "core_within_20": 0.95, "min_inside": 0.8, "min_visible": 0.9, "max_flat": 0.15}


def _data_dir() -> Path:
    return Path(os.environ.get("LD_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def _ct_paths() -> tuple[Path, Path]:
    return (_data_dir() / "ct" / "abdomen_ct_3mm_crop.nii.gz",
            _data_dir() / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz")


# ----------------------------------------------------------------------------------------------- generation
def generate(out_root: Path, names: list[str], seeds: int) -> None:
    """Preprocess + synthesize every (type, seed) into out_root/<type>/<seed>; failures go to failures.json."""
    from ld_augment.pipeline import preprocess_case, synthesize_case

    ct, seg = _ct_paths()
    failures: dict[str, str] = {}
    for name in names:
        organ, lesion_type = TYPES[name]
        for seed in range(seeds):
            case_dir = out_root / name / str(seed)
            try:
                case = preprocess_case(ct, case_dir / "case", organ=organ, lesion_type=lesion_type, seg=seg,
                                       seed=seed, preview=False)
                synthesize_case(case.case_dir, case_dir / "out", seed=seed, preview=False, keep_standardized=True)
            except Exception as exc:  # a benchmark counts crashes (and all-dropped cases) instead of stopping
                failures[f"{name}/{seed}"] = f"{type(exc).__name__}: {exc}"
                if "quality gate" not in str(exc):
                    traceback.print_exc(limit=2)
            print(f"  {name} seed {seed} done", flush=True)
    (out_root / "failures.json").write_text(json.dumps(failures, indent=1))


def generate_with_revision(ref: str, out_root: Path, names: list[str], seeds: int) -> None:
    """Generate the same cases with the package as of git revision ``ref`` (subprocess, its own PYTHONPATH)."""
    from _revision import run_with_revision

    run_with_revision(ref, [sys.executable, str(Path(__file__).resolve()), "--generate-only", "--out", str(out_root),
                            "--seeds", str(seeds), "--types", *names])


# ---------------------------------------------------------------------------------------------- measurement
class Scan:
    """The shared CT, its segmentation and spacing, loaded once."""

    def __init__(self) -> None:
        import nibabel as nib

        ct, seg = _ct_paths()
        img = nib.load(str(ct))
        self.affine = img.affine
        self.before = np.asarray(img.dataobj, dtype=np.float32)
        self.seg = np.asarray(nib.load(str(seg)).dataobj)
        self.spacing = tuple(float(s) for s in nib.affines.voxel_sizes(img.affine))

    def organ(self, name: str) -> np.ndarray:
        from ld_augment.organs.masks import organ_mask

        return organ_mask(self.seg, name, version="v2")


def measure_case(scan: Scan, case_root: Path, organ: str) -> dict | None:
    """The gate's measurements of one written case in the source grid (None when nothing was written)."""
    import nibabel as nib

    from ld_augment.engines.quality import lesion_quality
    from ld_augment.reports.model import load_reports

    out = case_root / "out"
    if not (out / "label.nii.gz").is_file():
        return None
    after = np.asarray(nib.load(str(out / "ct.nii.gz")).dataobj, dtype=np.float32)
    lesion = np.asarray(nib.load(str(out / "label.nii.gz")).dataobj) == 2
    record = json.loads((out / "synthesis.json").read_text())
    (report,) = load_reports(out / "report.json")
    std = out / "standardized" / "lesions.nii.gz"
    flat_mask = np.asarray(nib.load(str(std)).dataobj) > 0 if std.is_file() else None
    lesions = record.get("lesions", [])
    claimed_ok = all((rec.get("quality") or {}).get("ok", True) for rec in lesions)  # no gate: all "ok"
    result = {"claimed_ok": claimed_ok, "dropped": len(record.get("skipped_lesions", [])),
              "redrawn": int((record.get("quality_gate") or {}).get("redrawn", 0))}
    if not lesion.any():
        return {**result, "quality": {"ok": False, "failures": ["empty label"]}}
    quality = lesion_quality(scan.before, after, lesion, scan.organ(organ), report, scan.spacing, organ_name=organ,
                             flat_mask=flat_mask)
    return {**result, "quality": quality}


# ------------------------------------------------------------------------------------------ negative controls
def negative_controls(scan: Scan) -> dict[str, dict]:
    """Five lesions that must fail the check, built on the liver of the shared CT in its source grid."""
    from scipy import ndimage

    from ld_augment.engines.procedural.density import parenchyma_hu
    from ld_augment.engines.quality import lesion_quality
    from ld_augment.reports.model import LesionReport

    liver = scan.organ("liver")
    ref = parenchyma_hu(scan.before[liver], "liver")
    depth = ndimage.distance_transform_edt(liver, sampling=scan.spacing)
    deep = np.unravel_index(int(np.argmax(depth)), liver.shape)
    grid = np.indices(liver.shape)
    dist = np.sqrt(sum(((grid[a] - deep[a]) * scan.spacing[a]) ** 2 for a in range(3)))
    ball = dist <= 12.0
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(liver.shape).astype(np.float32) * 8.0

    def report(density: str, hu: float, cavity: str = "within the parenchymal organ") -> LesionReport:
        return LesionReport(organ_id=5).with_values(density=density, ct_value=hu, cavity=cavity, shape="round-like",
                                                    size=(8, 8, 8))

    controls = {}
    box = np.zeros(liver.shape, bool)
    box[tuple(slice(int(c) - 4, int(c) + 4) for c in deep[:2]) + (slice(int(deep[2]) - 3, int(deep[2]) + 3),)] = True
    halo = ndimage.binary_dilation(box) & ~box
    after = scan.before + 60.0 * box + 45.0 * halo
    controls["box +60 HU with 45 HU halo"] = (after, box, report("hyperdense lesion", ref + 60.0))
    controls["invisible (label, no contrast)"] = (scan.before.copy(), ball, report("hypodense lesion", ref - 30.0))
    controls["fat core"] = (np.where(ball, -90.0 + noise, scan.before), ball, report("hypodense lesion", ref - 30.0))
    # floating: a ball centred on the liver's surface, in the fat beside it
    surface = liver & ~ndimage.binary_erosion(liver)
    outside_fat = ndimage.binary_dilation(surface, iterations=2) & ~liver & (scan.before < -50)
    spot = np.argwhere(outside_fat)[len(np.argwhere(outside_fat)) // 2]
    floating = np.sqrt(sum(((grid[a] - spot[a]) * scan.spacing[a]) ** 2 for a in range(3))) <= 10.0
    controls["floating (mostly outside the organ)"] = (
        np.where(floating, ref - 30.0 + noise, scan.before), floating, report("hypodense lesion", ref - 30.0))
    # drawn into a structure already as dark (a vessel, an unlabelled lesion): -30 HU against the wider
    # neighbourhood, but no edge of its own; the CT "before" is the one with the structure in it
    structure = np.where(dist <= 15.0, ref - 30.0 + noise, scan.before).astype(np.float32)
    controls["drawn into tissue already as dark"] = (structure, dist <= 8.0, report("hypodense lesion", ref - 30.0))
    befores = {"drawn into tissue already as dark": structure}
    return {name: lesion_quality(befores.get(name, scan.before), after.astype(np.float32), mask, liver, rep,
                                 scan.spacing, organ_name="liver")
            for name, (after, mask, rep) in controls.items()}


# ---------------------------------------------------------------------------------------------------- table
def summarize(tag: str, scan: Scan, root: Path, names: list[str], seeds: int) -> dict[str, dict]:
    failures = json.loads((root / "failures.json").read_text()) if (root / "failures.json").is_file() else {}
    rows = {}
    for name in names:
        cases = [measure_case(scan, root / name / str(s), TYPES[name][0]) for s in range(seeds)]
        done = [c for c in cases if c is not None]
        qs = [c["quality"] for c in done]
        crashed = [k for k, v in failures.items() if k.startswith(name + "/") and "quality gate" not in v]
        rows[name] = {
            "tag": tag, "n": len(done), "crash": len(crashed),
            "gate_dropped_case": sum(1 for k, v in failures.items() if k.startswith(name + "/") and "quality gate" in v),
            "dropped": sum(c["dropped"] for c in done), "redrawn": sum(c["redrawn"] for c in done),
            "written_ok_failures": sum(1 for c in done if c["claimed_ok"] and not c["quality"]["ok"]),
            "core_err": [q.get("core_error_hu") for q in qs if q.get("core_error_hu") is not None],
            "inside": [q["fraction_inside_organ"] for q in qs if "fraction_inside_organ" in q and not q["exophytic"]],
            "visible": [q["visible_label_ratio"] for q in qs if q.get("visible_label_ratio") is not None],
            "flat": [q["flat_face_fraction"] for q in qs if "flat_face_fraction" in q],
            "contrast": [q["contrast_hu"] for q in qs if "contrast_hu" in q],
            "reasons": [f for q in qs for f in q["failures"]],
        }
    return rows


def _med(values: list[float], spec: str = ".2f") -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return f"{np.median(v):{spec}} [{v.min():{spec}}..{v.max():{spec}}]" if v.size else "-"


def totals(rows: dict[str, dict]) -> dict[str, float]:
    allv = lambda key: [x for r in rows.values() for x in r[key]]  # noqa: E731
    core = np.abs(np.asarray(allv("core_err"), float))
    inside, visible, flat = allv("inside"), allv("visible"), allv("flat")
    return {
        "lesions": sum(r["n"] for r in rows.values()),
        "crashes": sum(r["crash"] for r in rows.values()),
        "written_ok_failures": sum(r["written_ok_failures"] for r in rows.values()),
        "core_within_20": float((core <= 20).mean()) if core.size else float("nan"),
        "min_inside": min(inside) if inside else float("nan"),
        "visible_ok": float(np.mean(np.asarray(visible) >= TARGETS["min_visible"])) if visible else float("nan"),
        "min_visible": min(visible) if visible else float("nan"),
        "max_flat": max(flat) if flat else float("nan"),
        "dropped": sum(r["dropped"] + r["gate_dropped_case"] for r in rows.values()),
        "redrawn": sum(r["redrawn"] for r in rows.values()),
    }


def print_table(runs: list[dict[str, dict]], names: list[str]) -> None:
    head = (f"{'type':15s} {'run':9s} {'n':>2s} {'crash':>5s} {'drop':>4s} {'redrw':>5s} {'ok-but-fail':>11s} "
            f"{'|core-req| HU med [min..max]':>28s} {'contrast HU':>18s} {'inside (non-exo)':>18s} "
            f"{'half-contrast/label':>20s} {'flat face':>18s}")
    print(head)
    print("-" * len(head))
    for name in names:
        for rows in runs:
            r = rows[name]
            print(f"{name:15s} {r['tag']:9s} {r['n']:2d} {r['crash']:5d} {r['dropped'] + r['gate_dropped_case']:4d} "
                  f"{r['redrawn']:5d} {r['written_ok_failures']:11d} {_med([abs(x) for x in r['core_err']], '.0f'):>28s} "
                  f"{_med(r['contrast'], '.0f'):>18s} {_med(r['inside']):>18s} {_med(r['visible']):>20s} "
                  f"{_med(r['flat']):>18s}")
    for rows in runs:
        tag = next(iter(rows.values()))["tag"]
        reasons: dict[str, int] = {}
        for r in rows.values():
            for f in r["reasons"]:
                key = f.split(":")[0].split(" (")[0]
                key = " ".join(w for w in key.split() if not any(ch.isdigit() for ch in w))
                reasons[key] = reasons.get(key, 0) + 1
        print(f"\n{tag}: failure reasons of the source-grid check: "
              + (", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"))


def check_targets(t: dict[str, float]) -> list[tuple[str, bool]]:
    return [
        (f"gate failures written as ok: {t['written_ok_failures']} (target 0)", t["written_ok_failures"] == 0),
        (f"no crashes: {t['crashes']}", t["crashes"] == 0),
        (f"core within 20 HU of the request: {100 * t['core_within_20']:.0f} % (target >= 95 %)",
         t["core_within_20"] >= TARGETS["core_within_20"]),
        (f"inside the organ, non-exophytic: min {t['min_inside']:.2f} (target >= 0.8)",
         t["min_inside"] >= TARGETS["min_inside"]),
        (f"half-contrast / label diameter >= 0.9: {100 * t['visible_ok']:.0f} % of lesions, min {t['min_visible']:.2f}"
         " (target: all)", t["visible_ok"] >= 1.0),
        (f"flat-face fraction: max {t['max_flat']:.2f} (target <= 0.15)", t["max_flat"] <= TARGETS["max_flat"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    parser.add_argument("--baseline-ref", default=None, help="git revision whose package generates the baseline")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not _ct_paths()[0].is_file():
        sys.exit(f"shared CT not found under {_data_dir()} (set LD_TEST_DATA)")
    root = args.out or Path(tempfile.mkdtemp(prefix="ld_bench_realism_"))
    if args.generate_only:
        generate(root, args.types, args.seeds)
        return
    scan = Scan()
    controls = negative_controls(scan)
    print("negative controls (each must FAIL the check):")
    for name, q in controls.items():
        print(f"  [{'failed, good' if not q['ok'] else 'PASSED: BAD'}] {name}: {'; '.join(q['failures']) or '-'}")
    t0 = time.perf_counter()
    if (root / "current").exists():
        shutil.rmtree(root / "current")
    generate(root / "current", args.types, args.seeds)
    t1 = time.perf_counter()
    runs = [summarize("current", scan, root / "current", args.types, args.seeds)]
    if args.baseline_ref:
        if not (root / "baseline" / "failures.json").is_file():  # a finished baseline in --out is reused
            generate_with_revision(args.baseline_ref, root / "baseline", args.types, args.seeds)
        runs.append(summarize(args.baseline_ref[:9], scan, root / "baseline", args.types, args.seeds))
    kept = f"outputs in {root}" if args.out else "outputs removed (--out DIR keeps them)"
    print(f"\n{len(args.types)} types x {args.seeds} seeds on the shared 3 mm crop; current: "
          f"{(t1 - t0) / (len(args.types) * args.seeds):.1f} s per case (preprocess + synthesize); {kept}\n")
    if not args.out:  # a run leaves ~1-2.5 GB of cases; a temporary folder goes with the run
        shutil.rmtree(root, ignore_errors=True)
    print_table(runs, args.types)
    ok = all(not q["ok"] for q in controls.values())
    for rows in runs:
        tag = next(iter(rows.values()))["tag"]
        t = totals(rows)
        print(f"\n{tag}: {t['lesions']} lesions written, {t['dropped']} dropped by the gate, {t['redrawn']} redrawn")
        checks = check_targets(t)
        print("\n".join(f"  [{'ok' if good else 'MISS'}] {text}" for text, good in checks))
        if rows is runs[0]:
            ok = ok and all(good for _, good in checks)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
