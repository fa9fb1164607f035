"""`synthesis-bank compare`: a bank's lesions against the user's real lesions, feature by feature.

Loads the bank (an nnU-Net raw dataset plus its manifest: organ, lesion type and report of every case) and a
real dataset (any labelled nnU-Net raw dataset, or the LIDC nodule folder), measures every lesion on one
common spacing, and writes per "organ / lesion type": both distributions side by side, a distance per
feature, a classifier two-sample test with its shuffled-label control, a train-on-synthetic-test-on-real
detector check, plots and a markdown report (``report.md``), plus the raw feature tables as CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ld_augment.errors import InputError
from ld_augment.evaluation.compare import (
    LABEL_CONVENTION, MIN_REAL, feature_table, two_sample_auc, train_synthetic_test_real,
)
from ld_augment.evaluation.datasets import LesionSet, group_key, load_lidc, load_nnunet_raw
from ld_augment.evaluation.lesion_features import FEATURES
from ld_augment.io.atomic import atomic_save_figure, atomic_write_json, atomic_write_text

from synthesis_bank.manifest import collect_entries

#: Report attributes carried from a bank case's report into its rows (as ``attr_<name>``).
REPORT_ATTRIBUTES = ("density", "shape", "density variations", "surface characteristics", "specific features",
                     "CT value", "enhancement status")


def report_attributes(reports: Any) -> dict[str, str]:
    """The attributes of a case's report (type.json layout: {organ id: [text, "", {attr: value}, bboxes]})."""
    out: dict[str, str] = {}
    if not isinstance(reports, Mapping):
        return out
    for value in reports.values():
        attrs = value[2] if isinstance(value, (list, tuple)) and len(value) > 2 else None
        if isinstance(attrs, Mapping):
            for name in REPORT_ATTRIBUTES:
                if name in attrs:
                    out["attr_" + name.replace(" ", "_")] = str(attrs[name]).strip().rstrip(",")
    return out


def bank_case_meta(bank: Path) -> dict[str, dict[str, Any]]:
    """Per ok case of a bank: organ, lesion type and report attributes (empty when there is no manifest)."""
    meta = {}
    for case_id, entry in collect_entries(bank).items():
        if entry.get("status") != "ok":
            continue
        meta[case_id] = {"organ": entry.get("organ", "organ"), "lesion_type": entry.get("lesion_type", "lesion"),
                         **report_attributes(entry.get("reports"))}
    return meta


def load_bank(bank: str | Path, spacing: Sequence[float], *, seed: int = 0) -> LesionSet:
    """Every lesion of a bank folder (labels "lesion"/"organ" of its label scheme), tagged from its manifest."""
    bank = Path(bank)
    if not (bank / "dataset.json").is_file():
        raise InputError(f"{bank}: not a bank folder (no dataset.json)")
    meta = bank_case_meta(bank)
    labels = json.loads((bank / "dataset.json").read_text(encoding="utf-8")).get("labels") or {}
    organ = ["organ"] if "organ" in labels else None
    out = load_nnunet_raw(bank, spacing, lesion_labels=["lesion"], organ_labels=organ, case_meta=meta,
                          cases=list(meta) if meta else None, seed=seed)
    out.name = f"bank {bank.name}"
    return out


def load_real(real: str | Path, spacing: Sequence[float], *, lesion_labels: Sequence[str] | None = None,
              organ_labels: Sequence[str] | None = None, organ: str | None = None, lesion_type: str | None = None,
              limit: int | None = None, seed: int = 0) -> LesionSet:
    """A labelled nnU-Net raw dataset (dataset.json) or an LIDC nodule folder (metadata.csv + images/masks)."""
    real = Path(real)
    if (real / "metadata.csv").is_file() and (real / "masks").is_dir():
        return load_lidc(real, spacing, limit=limit, seed=seed)
    if (real / "dataset.json").is_file():
        return load_nnunet_raw(real, spacing, lesion_labels=lesion_labels, organ_labels=organ_labels,
                               organ_name=organ or "(real)", lesion_type=lesion_type or "(real)", seed=seed)
    raise InputError(f"{real}: neither a labelled nnU-Net raw dataset (dataset.json) nor an LIDC nodule folder "
                     "(metadata.csv, images/, masks/)")


@dataclass
class GroupResult:
    group: str
    n_synthetic: int
    n_real: int
    table: list[dict[str, Any]]
    auc: dict[str, Any]
    tstr: dict[str, Any]
    plot: str | None

    def verdict(self) -> str:
        if self.n_real < MIN_REAL:
            return f"too few real lesions to conclude ({self.n_real} < {MIN_REAL})"
        auc = max(self.auc.get("logistic", math.nan), self.auc.get("random_forest", math.nan))
        if not math.isfinite(auc):
            return str(self.auc.get("verdict", "no classifier result"))
        word = "indistinguishable" if auc <= 0.6 else "close" if auc <= 0.75 else "distinguishable"
        few = f"; only {self.n_synthetic} synthetic lesions: the AUC is uncertain" if self.n_synthetic < MIN_REAL else ""
        return f"synthetic vs real AUC {auc:.2f}: {word} (0.5 = indistinguishable{few})"


def _real_for(group_rows: Sequence[Mapping[str, Any]], real: LesionSet) -> tuple[list[dict], list, list]:
    """Real rows, their lesion patches and lesion-free patches of the bank group's organ when the real set knows
    organs, else all of them."""
    organs = {r.get("organ") for r in group_rows}
    idx = [i for i, r in enumerate(real.rows) if r.get("organ") in organs]
    if not idx:
        return list(real.rows), list(real.positives), list(real.negatives)
    negs = [p for p, g in zip(real.negatives, real.negative_groups) if g.get("organ") in organs]
    return [real.rows[i] for i in idx], [real.positives[i] for i in idx], negs or list(real.negatives)


def _plot(group: str, synthetic: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f for f in FEATURES if f != "components"]
    cols = 4
    rows = int(math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.6 * rows))
    for ax, name in zip(axes.ravel(), names):
        s = np.asarray([r.get(name, math.nan) for r in synthetic], float)
        r_ = np.asarray([r.get(name, math.nan) for r in real], float)
        s, r_ = s[np.isfinite(s)], r_[np.isfinite(r_)]
        data = [r_ if r_.size else np.array([np.nan]), s if s.size else np.array([np.nan])]
        ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=True, flierprops={"markersize": 2})
        ax.set_yticks([1, 2], [f"real ({r_.size})", f"synthetic ({s.size})"], fontsize=8)
        if r_.size:
            q25, q75 = np.percentile(r_, [25, 75])
            ax.axvspan(q25, q75, color="tab:green", alpha=0.15)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{group}: synthetic vs real (green band: real IQR)", fontsize=11)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "all"


def compare_sets(bank: LesionSet, real: LesionSet, out_dir: str | Path, *, seed: int = 0,
                 plots: bool = True) -> list[GroupResult]:
    """Compare per bank group (organ / lesion type) and over all bank lesions; write report, CSVs, plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(bank.rows):
        groups.setdefault(group_key(row), []).append(i)
    if len(groups) > 1:
        groups["all bank lesions"] = list(range(len(bank.rows)))
    results = []
    for group, idx in groups.items():
        syn_rows = [bank.rows[i] for i in idx]
        syn_pos = [bank.positives[i] for i in idx]
        real_rows, real_pos, real_neg = (_real_for(syn_rows, real) if group != "all bank lesions"
                                         else (real.rows, real.positives, real.negatives))
        table = feature_table(syn_rows, real_rows)
        auc = two_sample_auc(syn_rows, real_rows, seed=seed)
        tstr = train_synthetic_test_real(syn_pos, bank.negatives, real_pos, real_neg, bank.spacing, seed=seed)
        plot = _plot(group, syn_rows, real_rows, out_dir / f"features_{_slug(group)}.png") if plots else None
        results.append(GroupResult(group, len(syn_rows), len(real_rows), table, auc, tstr, plot))
    _write_csv(out_dir / "features_synthetic.csv", bank.rows)
    _write_csv(out_dir / "features_real.csv", real.rows)
    atomic_write_json(out_dir / "summary.json", {
        "bank": bank.name, "real": real.name, "spacing_mm": list(bank.spacing), "min_real": MIN_REAL,
        "groups": [{"group": r.group, "n_synthetic": r.n_synthetic, "n_real": r.n_real, "verdict": r.verdict(),
                    "two_sample": r.auc, "train_synthetic_test_real": r.tstr, "features": r.table}
                   for r in results]})
    atomic_write_text(out_dir / "report.md", format_report(bank, real, results))
    return results


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def format_feature_table(table: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| feature | synthetic median [IQR] | real median [IQR] | synth. median in real IQR | "
             "Wasserstein / real IQR | KS |", "| --- | --- | --- | --- | --- | --- |"]
    for t in table:
        inside = {True: "yes", False: "**no**", None: "-"}[t["inside_real_iqr"]]
        lines.append(f"| {t['feature']} | {_fmt(t['synthetic_median'])} [{_fmt(t['synthetic_q25'])}, "
                     f"{_fmt(t['synthetic_q75'])}] | {_fmt(t['real_median'])} [{_fmt(t['real_q25'])}, "
                     f"{_fmt(t['real_q75'])}] | {inside} | {_fmt(t['wasserstein_iqr'])} | {_fmt(t['ks'])} |")
    return "\n".join(lines)


def format_report(bank: LesionSet, real: LesionSet, results: Sequence[GroupResult]) -> str:
    sp = " x ".join(f"{s:g}" for s in bank.spacing)
    out = [f"# Synthetic vs real lesions: {bank.name} vs {real.name}", "",
           f"Both measured on a common {sp} mm grid. {len(bank.rows)} synthetic and {len(real.rows)} real lesions. "
           f"A comparison needs at least {MIN_REAL} real lesions to conclude.", "",
           "How to read: a feature whose synthetic median falls outside the real IQR is off; the two-sample AUC "
           "says how well all features together tell synthetic from real (0.5 = indistinguishable; the shuffled "
           "control must be ~0.5); the detector AUC says how well a detector trained on the bank finds the real "
           "lesions (compare with the ceiling trained on real data).", ""]
    for r in results:
        out += [f"## {r.group}", "", f"**{r.verdict()}** ({r.n_synthetic} synthetic, {r.n_real} real)", ""]
        if "logistic" in r.auc:
            ci = {k: f" (95 % interval {_fmt(lo)}-{_fmt(hi)})" for k, (lo, hi) in r.auc.get("interval", {}).items()}
            out += ["| two-sample test (cross-validated AUC) | value |", "| --- | --- |",
                    f"| logistic regression | {_fmt(r.auc['logistic'])}{ci.get('logistic', '')} |",
                    f"| random forest | {_fmt(r.auc['random_forest'])}{ci.get('random_forest', '')} |",
                    f"| random forest, shuffled labels (control) | {_fmt(r.auc['shuffled_control'])} |"]
            own = r.auc.get("without_label_convention")
            if own:  # a generously contoured real set differs in these whatever the lesions look like
                out += [f"| logistic / forest without the label-convention features ({', '.join(LABEL_CONVENTION)}) "
                        f"| {_fmt(own['logistic'])} / {_fmt(own['random_forest'])} |"]
            out += [""]
            telling = list(r.auc.get("per_feature_auc", {}).items())[:5]
            if telling:
                out += ["Most telling features alone (AUC; below 0.5: lower in synthetic): "
                        + ", ".join(f"{k} {_fmt(v)}" for k, v in telling) + ".", ""]
        if "auc" in r.tstr:
            out += [f"Train on synthetic, test on real: detector AUC **{_fmt(r.tstr['auc'])}** "
                    f"({r.tstr['n_real_lesion']} real lesion patches vs {r.tstr['negatives']}"
                    + (f"; ceiling trained on real: {_fmt(r.tstr['real_ceiling_auc'])}" if "real_ceiling_auc" in r.tstr
                       else "") + ").", ""]
        else:
            out += [f"Train on synthetic, test on real: {r.tstr.get('verdict')}.", ""]
        out += [format_feature_table(r.table), ""]
        if r.plot:
            out += [f"![{r.group}]({r.plot})", ""]
    return "\n".join(out)


def run_compare(bank: str | Path, real: str | Path, out_dir: str | Path, *, spacing: Sequence[float],
                lesion_labels: Sequence[str] | None = None, organ_labels: Sequence[str] | None = None,
                real_limit: int | None = None, seed: int = 0, plots: bool = True) -> list[GroupResult]:
    bank_set = load_bank(bank, spacing, seed=seed)
    if not bank_set.rows:
        raise InputError(f"{bank}: no lesion found in the bank's labels")
    real_set = load_real(real, spacing, lesion_labels=lesion_labels, organ_labels=organ_labels,
                         limit=real_limit, seed=seed)
    return compare_sets(bank_set, real_set, out_dir, seed=seed, plots=plots)
