"""The benchmark's outputs: the long CSV, the comparisons (paired by case / lesion), results.md and the plots.

results.csv is long format, one value per row, every row the same columns (`COLUMNS`, written with the csv
module, so label names such as `(1, 2, 3)` or commas cannot break it). Lesion "" = the case; "r<k>" = the
case's k-th reference lesion, "p<k>" its k-th predicted lesion (metrics.py states the matching rule).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnunet_trainers.gain import stats
from nnunet_trainers.gain.metrics import size_bin, size_bin_names

COLUMNS = ["arm", "ratio", "n_real", "fold", "seed", "case", "lesion", "metric", "value"]
LOWER_IS_BETTER = ("hd95_lesion", "fp_lesions") + tuple(f"fp_{b}" for b in size_bin_names())
HEADLINE = ("dice_lesion", "detected")


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Write rows atomically with the csv module (values as repr-free floats; NaN as 'nan')."""
    import io

    from ld_augment.io.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["value"] = float(r["value"])
        r["ratio"] = float(r["ratio"])
        r["seed"] = int(r["seed"])
    return rows


def merge_jobs(out: Path) -> list[dict]:
    """Every job's rows.csv under OUT/jobs (the --merge step)."""
    files = sorted((out / "jobs").glob("*/*/rows.csv"))
    rows = [r for f in files for r in read_rows(f)]
    return rows


# --- derived metrics, keyed for pairing -----------------------------------------------------------------------
Key = tuple  # (fold, seed, case, unit)


def derive(rows: Sequence[dict]) -> dict[str, dict[tuple[str, str], dict[Key, float]]]:
    """{arm: {(metric, level): {(fold, seed, case, unit): value}}} with the per-size and patient-level metrics."""
    by_arm: dict = defaultdict(lambda: defaultdict(dict))
    lesions: dict = defaultdict(dict)            # (arm, fold, seed, case, lesion) -> {metric: value}
    for r in rows:
        if r["lesion"] == "":
            key = (r["fold"], r["seed"], r["case"], r["case"])
            m = r["metric"]
            if m in ("patient_ref", "patient_pred", "n_ref_lesions", "n_pred_lesions"):
                lesions[(r["arm"], r["fold"], r["seed"], r["case"], "")][m] = r["value"]
            else:
                by_arm[r["arm"]][(m, "case")][key] = r["value"]
        else:
            lesions[(r["arm"], r["fold"], r["seed"], r["case"], r["lesion"])][r["metric"]] = r["value"]
    fp_bins: dict = defaultdict(lambda: defaultdict(int))
    tp_bins: dict = defaultdict(lambda: defaultdict(int))
    for (arm, fold, seed, case, lesion), v in lesions.items():
        key = (fold, seed, case, case)
        if lesion == "":
            ref, pred = v.get("patient_ref"), v.get("patient_pred")
            if ref is not None and pred is not None:
                name = "patient_sensitivity" if ref > 0 else "patient_specificity"
                by_arm[arm][(name, "case")][key] = pred if ref > 0 else 1.0 - pred
            for b in size_bin_names():                      # every case counts, with zero FPs if none
                fp_bins[(arm, fold, seed, case)][b] += 0
            continue
        if lesion.startswith("r"):
            ukey = (fold, seed, case, f"{case}/{lesion}")
            by_arm[arm][("detected", "lesion")][ukey] = v["detected"]
            by_arm[arm][(f"sens_{size_bin(v['diameter_mm'])}", "lesion")][ukey] = v["detected"]
            if not math.isnan(v.get("lesion_dice", math.nan)):
                by_arm[arm][("lesion_dice", "lesion")][ukey] = v["lesion_dice"]
        elif lesion.startswith("p"):
            b = size_bin(v["diameter_mm"])
            if v["tp"] > 0:
                tp_bins[(arm, fold, seed, case)][b] += 1
            else:
                fp_bins[(arm, fold, seed, case)][b] += 1
    for (arm, fold, seed, case), counts in fp_bins.items():
        for b in size_bin_names():
            fp, tp = counts[b], tp_bins[(arm, fold, seed, case)][b]
            by_arm[arm][(f"fp_{b}", "case")][(fold, seed, case, case)] = float(fp)
            if fp + tp:
                by_arm[arm][(f"precision_{b}", "case")][(fold, seed, case, case)] = tp / (fp + tp)
    return by_arm


def comparisons(rows: Sequence[dict], arm_baselines: dict[str, str], *, n_boot: int = stats.N_BOOT
                ) -> list[tuple[str, str, stats.Comparison]]:
    """(arm, baseline, Comparison) for every arm, metric both arms have; Holm-adjusted per arm."""
    derived = derive(rows)
    out = []
    for arm, base in arm_baselines.items():
        if arm == base or arm not in derived or base not in derived:
            continue
        group = []
        for (metric, level), values in sorted(derived[arm].items(), key=lambda kv: _order(kv[0][0])):
            base_values = derived[base].get((metric, level), {})
            nested: dict = defaultdict(lambda: defaultdict(list))
            a_vals, b_vals = [], []
            for key, v in values.items():
                b = base_values.get(key)
                if b is None or math.isnan(v) or math.isnan(b):
                    continue
                nested[key[2]][key[3]].append(v - b)
                a_vals.append(v)
                b_vals.append(b)
            if not a_vals:
                continue
            c = stats.compare(metric, nested, b_vals, a_vals, level=level,
                              higher_is_better=metric not in LOWER_IS_BETTER, n_boot=n_boot)
            group.append(c)
        stats.adjust(group)
        out += [(arm, base, c) for c in group]
    return out


def _order(metric: str) -> tuple:
    head = {"dice_lesion": 0, "detected": 1, "lesion_dice": 2, "hd95_lesion": 3, "nsd_lesion": 4,
            "fp_lesions": 5, "precision": 6, "patient_sensitivity": 7, "patient_specificity": 8}
    return (head.get(metric, 20 if metric.startswith("dice_") else 30), metric)


def _f(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _signed(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.4f}"


def ci_cell(c: stats.Comparison) -> str:
    if not c.ci_ok:
        return "not reported (degenerate: < 2 cases or zero width)"
    return f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"


def summary_table(comps: Sequence[tuple[str, str, stats.Comparison]]) -> list[str]:
    lines = ["| arm | vs | metric | level | cases | units | baseline | arm | difference | 95% CI | p | p (Holm) "
             "| dz | rank-biserial | significant? | verdict |", "|" + "---|" * 16]
    for arm, base, c in comps:
        sig = "not assessed" if c.significant is None else ("yes" if c.significant else "no")
        lines.append(f"| {arm} | {base} | {c.metric} | {c.level} | {c.n_cases} | {c.n_units} | {_f(c.base_mean)} | "
                     f"{_f(c.arm_mean)} | {_signed(c.diff)} | {ci_cell(c)} | {_f(c.p, 3)} | {_f(c.p_holm, 3)} | "
                     f"{_f(c.dz, 2)} | {_f(c.rank_biserial, 2)} | {sig} | {c.verdict} |")
    return lines


def overall_verdict(comps: Sequence[tuple[str, str, stats.Comparison]], n_cases: int, n_lesions: int) -> str:
    if n_cases < stats.MIN_CASES or n_lesions < stats.MIN_LESIONS:
        return (f"**Too few to conclude: {n_cases} test case(s) (minimum {stats.MIN_CASES}) and {n_lesions} "
                f"reference lesion(s) (minimum {stats.MIN_LESIONS}). The differences below describe this run "
                f"only; they are not evidence that the bank helps or hurts.**")
    sig = [(a, c) for a, _, c in comps if c.significant and c.metric in HEADLINE]
    if not sig:
        return "**No significant difference in lesion Dice or lesion sensitivity (Holm-adjusted, alpha 0.05).**"
    return "**Significant (Holm-adjusted, alpha 0.05): " + "; ".join(
        f"{a}: {c.metric} {c.verdict} ({c.diff:+.4f})" for a, c in sig) + ".**"


def detection_table(rows: Sequence[dict]) -> list[str]:
    """Pooled over folds and seeds: per arm and size bin, lesions, sensitivity, FP per case, precision."""
    derived = derive(rows)
    lines = ["| arm | size | reference lesions (x runs) | sensitivity | FP per case | precision |",
             "|---|---|---|---|---|---|"]
    for arm, metrics in derived.items():
        for b in size_bin_names():
            det = list(metrics.get((f"sens_{b}", "lesion"), {}).values())
            fp = list(metrics.get((f"fp_{b}", "case"), {}).values())
            prec = [v for v in metrics.get((f"precision_{b}", "case"), {}).values() if not math.isnan(v)]
            lines.append(f"| {arm} | {b} | {len(det)} | {_f(float(np.mean(det))) if det else 'n/a'} | "
                         f"{_f(float(np.mean(fp))) if fp else 'n/a'} | {_f(float(np.mean(prec))) if prec else 'n/a'} |")
    return lines


def froc_points(rows: Sequence[dict], arm: str) -> tuple[np.ndarray, np.ndarray]:
    """(FP per case, sensitivity) at every predicted-lesion score threshold, pooled over runs of the arm."""
    refs, preds, cases = [], [], set()
    lesions: dict = defaultdict(dict)
    for r in rows:
        if r["arm"] != arm:
            continue
        cases.add((r["fold"], r["seed"], r["case"]))
        if r["lesion"]:
            lesions[(r["fold"], r["seed"], r["case"], r["lesion"])][r["metric"]] = r["value"]
    for (_, _, _, lesion), v in lesions.items():
        if lesion.startswith("r"):
            refs.append(v["detect_score"] if v.get("detected") else -1.0)
        elif lesion.startswith("p") and not v.get("tp"):
            preds.append(v["score"])
    if not refs or not cases:
        return np.array([]), np.array([])
    thresholds = np.unique(np.concatenate([[r for r in refs if r >= 0], preds, [np.inf]]))[::-1]
    refs_a, preds_a = np.asarray(refs), np.asarray(preds)
    fp = np.array([(preds_a >= t).sum() / len(cases) for t in thresholds])
    sens = np.array([((refs_a >= t) & (refs_a >= 0)).sum() / len(refs_a) for t in thresholds])
    return fp, sens


def plots(rows: Sequence[dict], comps, out: Path, arms: Sequence) -> list[str]:
    """per_size_sensitivity.png, froc.png, ratio_sweep.png, learning_curve.png (the last two when the protocol
    has more than one ratio / n-real); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ld_augment.io.atomic import atomic_save_figure

    written = []
    derived = derive(rows)
    names = [a.name for a in arms if a.name in derived]
    bins = size_bin_names()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(names))
    for i, arm in enumerate(names):
        vals = [np.mean(list(derived[arm].get((f"sens_{b}", "lesion"), {}).values()) or [np.nan]) for b in bins]
        ax.bar(np.arange(len(bins)) + i * width, vals, width, label=arm)
    ax.set_xticks(np.arange(len(bins)) + width * (len(names) - 1) / 2, bins)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("Sensitivity by reference lesion size (pooled runs)")
    ax.legend(fontsize=7)
    atomic_save_figure(fig, out / "per_size_sensitivity.png")
    plt.close(fig)
    written.append("per_size_sensitivity.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm in names:
        fp, sens = froc_points(rows, arm)
        if fp.size:
            ax.step(fp, sens, where="post", label=arm)
    ax.set_xlabel("false-positive lesions per case")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.05)
    ax.set_title("FROC (predicted lesions ranked by max probability)")
    ax.legend(fontsize=7)
    atomic_save_figure(fig, out / "froc.png")
    plt.close(fig)
    written.append("froc.png")

    full = [a for a in arms if a.n_real is None and a.ratio > 0]
    if full:
        fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4 * len(HEADLINE), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], HEADLINE):
            for a in full:
                c = next((c for arm, _, c in comps if arm == a.name and c.metric == metric), None)
                if c is None or math.isnan(c.diff):
                    continue
                err = None if not c.ci_ok else [[c.diff - c.ci[0]], [c.ci[1] - c.diff]]
                ax.errorbar([a.ratio], [c.diff], yerr=err, fmt="o", capsize=3, color="tab:blue")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel("bank ratio")
            ax.set_ylabel(f"{metric}: mixed - real")
            ax.set_title(f"ratio sweep: {metric}")
        atomic_save_figure(fig, out / "ratio_sweep.png")
        plt.close(fig)
        written.append("ratio_sweep.png")

    curve = [a for a in arms if a.n_real is not None]
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        families = defaultdict(list)
        for a in arms:
            mean = np.nanmean(list(derived.get(a.name, {}).get(("dice_lesion", "case"), {}).values()) or [np.nan])
            families["real" if a.ratio == 0 else f"mixed r={a.ratio:.2f}"].append(
                (a.n_real if a.n_real is not None else max(x.n_real for x in curve) + 1, mean))
        for fam, pts in families.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=fam)
        ax.set_xlabel("real training cases per fold (rightmost: all)")
        ax.set_ylabel("lesion Dice")
        ax.set_title("learning curve")
        ax.legend(fontsize=7)
        atomic_save_figure(fig, out / "learning_curve.png")
        plt.close(fig)
        written.append("learning_curve.png")
    return written


def write_report(out: Path, rows: Sequence[dict], protocol, runs: Sequence[dict], *, n_boot: int = stats.N_BOOT
                 ) -> str:
    """OUT/results.csv, OUT/results.md, OUT/runs.csv and the plots; returns results.md's text."""
    from ld_augment.io.atomic import atomic_write_text

    write_rows(out / "results.csv", rows)
    arms = protocol.arm_list()
    comps = comparisons(rows, {a.name: a.baseline for a in arms}, n_boot=n_boot)
    eval_cases = {r["case"] for r in rows}
    ref_lesions = {(r["case"], r["lesion"]) for r in rows if r["lesion"].startswith("r") and r["arm"] == "real"}
    written = plots(rows, comps, out, arms)
    md = [f"# Gain benchmark: {protocol.dataset}", "",
          overall_verdict(comps, len(eval_cases), len(ref_lesions)), "",
          f"Lesion target: `{protocol.lesion_name}` = label values {protocol.lesion_values}. Evaluation cases: "
          f"{len(eval_cases)} ({'imagesTs, predicted by every fold' if protocol.eval_source == 'imagesTs' else 'each fold held out (cross-validated)'}); "
          f"reference lesions: {len(ref_lesions)}. Folds: {', '.join(protocol.folds)}; seeds: "
          f"{', '.join(map(str, protocol.seeds))}; plans {protocol.plans}"
          f"{' (--quick: coarse spacing, capped features)' if protocol.quick else ''}; schedule "
          f"{protocol.schedule}.", "",
          "Differences are arm minus its real-only baseline, paired by test case (case metrics) or reference "
          "lesion (lesion metrics) within the same fold and seed. 95% CI: hierarchical percentile bootstrap "
          "(cases, then lesions, then fold x seed runs). p: Wilcoxon signed-rank over cases, or a sign-flip "
          "permutation test flipping each case's lesions together; Holm-adjusted over each arm's metrics. "
          f"Nothing is concluded below {stats.MIN_CASES} test cases (case metrics) or {stats.MIN_LESIONS} "
          "reference lesions (lesion metrics). hd95 and fp are lower-is-better.", ""]
    md += summary_table(comps)
    md += ["", "## Detection by lesion size (pooled over runs)", ""] + detection_table(rows)
    if runs:
        md += ["", "## Runs (time and hardware per arm, fold and seed)", "",
               "| job | train s | predict+evaluate s | hardware |", "|---|---|---|---|"]
        for r in runs:
            hw = r.get("hardware", {})
            md.append(f"| {r['job']} | {r['train_seconds']} | {r['predict_evaluate_seconds']} | "
                      f"{hw.get('gpu') or hw.get('cpu')} x{hw.get('cpu_count')} ({r.get('device')}) |")
        _write_runs(out / "runs.csv", runs)
    md += ["", "Plots: " + ", ".join(written)]
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "results.md", text)
    return text


def _write_runs(path: Path, runs: Sequence[dict]) -> None:
    import io

    from ld_augment.io.atomic import atomic_write_text

    cols = ["job", "arm", "ratio", "n_real", "fold", "seed", "train_seconds", "predict_evaluate_seconds", "device",
            "hardware"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in runs:
        w.writerow({**r, "hardware": "; ".join(f"{k}={v}" for k, v in r.get("hardware", {}).items())})
    atomic_write_text(path, buf.getvalue())
