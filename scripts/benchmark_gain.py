#!/usr/bin/env python
"""Does the bank help? Train nnU-Net real-only and mixed at given ratios, evaluate on the held-out test set.

    python scripts/benchmark_gain.py --dataset 3 --bank BANK --ratios 0.25 0.5 --folds 0 1 --epochs 50 --out OUT
    python scripts/benchmark_gain.py ... --dry-run            # print the commands only

Each arm (real-only = `nnUNetTrainer_<N>epochs`; mixed = `nnUNetTrainerLesionDiffusion_<N>epochs` with
LD_BANK_RATIO=r) trains into its own `OUT/results/<arm>` (set as nnUNet_results for its commands, so arms
sharing a trainer class never overwrite each other), predicts `imagesTs`, and is evaluated against `labelsTs`
with nnU-Net's Dice plus lesion-wise detection by lesion size (< 10, 10-20, > 20 mm), false-positive lesions
per case and the lesion NSD (`nnunet_trainers.evaluation`); the lesion label is the dataset.json label named
tumour/cancer/lesion/... (or --lesion-label). Writes OUT/results.csv (per fold, mean, SD), OUT/results.md (mean
± SD and each mixed arm's paired difference to real-only with a 95% bootstrap CI over folds) and OUT/gain.png.
A test set that a bank case was made from (by source id or image sha256) is refused. The bank must be
prepared for the dataset (`synthesis-bank prepare`). Not here: repeated seeds (nnU-Net's training has no
seed option; repeat folds instead). `--ensemble` adds each arm's ensemble of the folds (nnU-Net's own
multi-fold prediction), reported beside the per-fold statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ld_augment.errors import LdAugmentError  # noqa: E402

EPOCHS = (1, 5, 10, 20, 50, 100, 250, 500)   # lengths both nnU-Net and nnunet_trainers ship variants for
ENSEMBLE = "ensemble"                        # the fold name of an arm's all-folds ensemble prediction


@dataclass(frozen=True)
class Arm:
    name: str          # "real" or "mixed_r0.50"
    ratio: float
    trainer: str


@dataclass(frozen=True)
class Step:
    arm: Arm
    fold: int | str
    kind: str          # "train" | "predict"
    cmd: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.cmd)}"


def arms_for(ratios: Sequence[float], epochs: int | None, trainer_real: str | None,
             trainer_mixed: str | None) -> list[Arm]:
    if epochs is not None and epochs not in EPOCHS:
        raise SystemExit(f"--epochs {epochs}: choose one of {EPOCHS} (or name trainers with --trainer-real/-mixed)")
    real = trainer_real or ("nnUNetTrainer" if epochs is None else
                            "nnUNetTrainer_1epoch" if epochs == 1 else f"nnUNetTrainer_{epochs}epochs")
    mixed = trainer_mixed or ("nnUNetTrainerLesionDiffusion" if epochs is None else
                              f"nnUNetTrainerLesionDiffusion_{epochs}epochs")
    for r in ratios:
        if not 0 < r <= 1:
            raise SystemExit(f"--ratios: {r} is not in (0, 1]; the real-only arm is always included")
    return [Arm("real", 0.0, real)] + [Arm(f"mixed_r{r:.2f}", r, mixed) for r in ratios]


def plan_steps(args: argparse.Namespace, arms: list[Arm], test_images: Path) -> list[Step]:
    out = Path(args.out).resolve()
    ext = str(REPO / "nnunet_trainers" / "ext_trainer_dir")
    steps = []
    for arm in arms:
        # LD_BANK_RATIO=0 lets a LesionDiffusion variant serve as the real-only arm (stock trainers ignore it)
        env = {"nnUNet_results": str(out / "results" / arm.name), "nnUNet_extTrainer": ext, "LD_BANK_RATIO": "0"}
        if arm.ratio > 0:
            env.update(LD_BANK_DIR=str(Path(args.bank).resolve()), LD_BANK_RATIO=str(arm.ratio))
        trainer = _run_trainer(arm, args.bank)
        for fold in args.folds:
            train = ["nnUNetv2_train", str(args.dataset), args.configuration, str(fold), "-tr", trainer,
                     "-p", args.plans, "-device", args.device]
            pred = ["nnUNetv2_predict", "-i", str(test_images), "-o", str(out / "predictions" / arm.name / f"fold_{fold}"),
                    "-d", str(args.dataset), "-c", args.configuration, "-f", str(fold), "-tr", trainer,
                    "-p", args.plans, "-device", args.device]
            steps += [Step(arm, fold, "train", train, env), Step(arm, fold, "predict", pred, env)]
        if getattr(args, "ensemble", False):   # nnU-Net averages the folds' softmax outputs
            pred = ["nnUNetv2_predict", "-i", str(test_images), "-o", str(out / "predictions" / arm.name / ENSEMBLE),
                    "-d", str(args.dataset), "-c", args.configuration, "-f", *map(str, args.folds),
                    "-tr", trainer, "-p", args.plans, "-device", args.device]
            steps.append(Step(arm, ENSEMBLE, "predict", pred, env))
    return steps


def _run_trainer(arm: Arm, bank: str | None) -> str:
    """A bank trainer runs as its run-identity variant (`..._r050_<bank tag>`, nnunet_trainers.identity): that
    name is its results folder, so predict must use it too. Stock trainers keep their names."""
    if not arm.trainer.startswith("nnUNetTrainerLesionDiffusion"):
        return arm.trainer
    from nnunet_trainers.identity import run_name

    try:
        return run_name(arm.trainer, arm.ratio, Path(bank).resolve() if bank and arm.ratio > 0 else None)
    except LdAugmentError:      # no bank manifest yet (a dry run): the plain name, resolved when training
        return arm.trainer


def run_step(step: Step) -> None:
    env = dict(os.environ, **step.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    print(f"$ {step.shell()}", flush=True)
    subprocess.run(step.cmd, env=env, check=True)


def fmt(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v)


def bootstrap_ci(diffs: Sequence[float], *, n: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean paired difference (resampling folds x seeds; deterministic)."""
    import numpy as np

    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    if len(d) == 0:
        return math.nan, math.nan
    means = np.random.default_rng(seed).choice(d, size=(n, len(d)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv (one row per arm and fold, plus per-arm means and SDs) and results.md (mean ± SD, and the
    mixed arms' paired difference to real-only with a 95% bootstrap CI over folds)."""
    from ld_augment.io.atomic import atomic_write_text

    keys = list(rows[0])
    metric_keys = [k for k in keys if k not in ("arm", "ratio", "fold")]
    ensembles = [r for r in rows if r["fold"] == ENSEMBLE]   # reported apart: not a fold of the mean or the CI
    rows = [r for r in rows if r["fold"] != ENSEMBLE]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    means, sds = [], []
    for arm in arms:
        sel = [r for r in rows if r["arm"] == arm]
        mean = {"arm": arm, "ratio": sel[0]["ratio"], "fold": "mean"}
        sd = {"arm": arm, "ratio": sel[0]["ratio"], "fold": "sd"}
        for k in metric_keys:
            mean[k], sd[k] = _stats([float(r[k]) for r in sel])
        means.append(mean)
        sds.append(sd)
    lines = [",".join(keys)] + [",".join(fmt(r[k]) for k in keys) for r in rows + means + sds + ensembles]
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    base = arms[0]
    base_by_fold = {r["fold"]: r for r in rows if r["arm"] == base}
    md = ["| arm | ratio | " + " | ".join(metric_keys) + " |", "|" + "---|" * (len(metric_keys) + 2)]
    for m, sd in zip(means, sds):
        cells = []
        for k in metric_keys:
            cell = fmt(m[k]) if k.startswith("n_") else f"{fmt(m[k])} ± {fmt(sd[k])}"
            if m["arm"] != base and not k.startswith("n_"):
                diffs = [float(r[k]) - float(base_by_fold[r["fold"]][k]) for r in rows
                         if r["arm"] == m["arm"] and r["fold"] in base_by_fold]
                mean_diff = _stats(diffs)[0]
                lo, hi = bootstrap_ci(diffs)
                cell += f" ({mean_diff:+.4f} [{lo:+.4f}, {hi:+.4f}])" if not math.isnan(mean_diff) else ""
            cells.append(cell)
        md.append(f"| {m['arm']} | {m['ratio']} | " + " | ".join(cells) + " |")
    if ensembles:
        md += ["", "Ensemble of the folds:", "", md[0], md[1]]
        md += [f"| {e['arm']} | {e['ratio']} | " + " | ".join(fmt(e[k]) for k in metric_keys) + " |"
               for e in ensembles]
    atomic_write_text(out / "results.md", "Mean ± SD over folds; in brackets the paired difference to real-only "
                      "and its 95% bootstrap CI.\n\n" + "\n".join(md) + "\n")


def plot(rows: list[dict], out: Path, metrics: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ld_augment.io.atomic import atomic_save_figure

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, arm in enumerate(arms):
            vals = [float(r[metric]) for r in rows if r["arm"] == arm and not math.isnan(float(r[metric]))]
            if vals:
                ax.bar(i, sum(vals) / len(vals), color="tab:gray" if arm == "real" else "tab:blue", alpha=0.7)
                ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(metric)
        ax.set_ylim(0, 1.05)
    fig.suptitle("nnU-Net test-set metrics: real-only vs mixed with the bank (dots = folds)")
    atomic_save_figure(fig, out / "gain.png")
    plt.close(fig)


def lesion_values(labels: dict, dataset_json: Path) -> list[int]:
    """The label values that are lesion, from the dataset.json label name (tumour/cancer/lesion/... synonyms);
    for regions, the values of the lesion region (KiTS `masses` -> [2, 3])."""
    from synthesis_bank.label_mapping import is_lesion_name

    names = [n for n in labels if n != "background" and is_lesion_name(n)]
    if len(names) != 1:
        raise SystemExit(f"{dataset_json}: {'no label' if not names else f'labels {names}'} name the lesion "
                         f"(labels {labels}); pass --lesion-label VALUE")
    value = labels[names[0]]
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def check_test_set_is_unseen(bank: Path, images_ts: Path) -> None:
    """Refuse a test set that a bank case was made from (by source id or by image content)."""
    from ld_augment.io.nifti import sha256_file
    from synthesis_bank.nnunet_io import read_bank_cases

    cases = read_bank_cases(bank)
    files = sorted(images_ts.glob("*_0000.*"))
    ids = {f.name.split("_0000.")[0] for f in files}
    shas = {c.source_sha256 for c in cases if c.source_sha256}
    overlap = sorted({c.case_id for c in cases if c.source_id in ids}
                     | {f.name for f in files if sha256_file(f) in shas})
    if overlap:
        raise SystemExit(f"{images_ts}: the test set overlaps the bank's sources ({len(overlap)}: {overlap[:5]}); "
                         f"gains measured on it would be inflated. Rebuild the bank without the test images")


def evaluate_all(args: argparse.Namespace, arms: list[Arm], raw: Path, pre: Path) -> list[dict]:
    from nnunet_trainers.evaluation import evaluate_predictions

    dataset_json = raw / "dataset.json"
    labels = json.loads(dataset_json.read_text())["labels"]
    lesion = [args.lesion_label] if args.lesion_label is not None else lesion_values(labels, dataset_json)
    rows = []
    for arm in arms:
        for fold in [*args.folds, *([ENSEMBLE] if args.ensemble else [])]:
            name = ENSEMBLE if fold == ENSEMBLE else f"fold_{fold}"
            pred = Path(args.out).resolve() / "predictions" / arm.name / name
            metrics = evaluate_predictions(pred, raw / "labelsTs", dataset_json, pre / f"{args.plans}.json",
                                           lesion, num_processes=args.num_processes)
            rows.append({"arm": arm.name, "ratio": arm.ratio, "fold": fold, **metrics})
    return rows


def is_lesion_key(key: str) -> bool:
    from synthesis_bank.label_mapping import is_lesion_name

    return is_lesion_name(key[len("dice_"):])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="nnU-Net dataset id or name (planned and preprocessed)")
    p.add_argument("--bank", required=True, help="bank folder, prepared for the dataset")
    p.add_argument("--out", required=True, help="output folder (results, predictions, tables, plot)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    p.add_argument("--folds", nargs="+", default=["0"], help="folds (ints or 'all')")
    p.add_argument("--epochs", type=int, default=None, help=f"training length; one of {EPOCHS}")
    p.add_argument("--trainer-real", default=None, help="override the real-only trainer name")
    p.add_argument("--trainer-mixed", default=None, help="override the mixed trainer (e.g. ..._5iters)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("--device", default="cuda")
    p.add_argument("--lesion-label", type=int, default=None,
                   help="default: the dataset.json label named tumour/cancer/lesion/... (one of them)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="processes for evaluation")
    p.add_argument("--skip-training", action="store_true", help="only predict and evaluate existing models")
    p.add_argument("--evaluate-only", action="store_true", help="only evaluate existing predictions")
    p.add_argument("--ensemble", action="store_true", help="also predict and evaluate each arm's ensemble of --folds")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)
    arms = arms_for(args.ratios, args.epochs, args.trainer_real, args.trainer_mixed)

    if args.dry_run:
        raw_ts = Path("$nnUNet_raw") / f"<{args.dataset}>" / "imagesTs"
        for step in plan_steps(args, arms, raw_ts):
            print(step.shell())
        return 0

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(args.dataset)
    raw, pre = Path(nnUNet_raw.require()) / name, Path(nnUNet_preprocessed.require()) / name
    for sub in ("imagesTs", "labelsTs"):
        if not (raw / sub).is_dir():
            raise SystemExit(f"{raw / sub} missing: the benchmark evaluates on the held-out test set")
    check_test_set_is_unseen(Path(args.bank), raw / "imagesTs")
    steps = plan_steps(args, arms, raw / "imagesTs")
    for step in steps:
        if args.evaluate_only or (args.skip_training and step.kind == "train"):
            continue
        run_step(step)
    rows = evaluate_all(args, arms, raw, pre)
    out = Path(args.out).resolve()
    write_tables(rows, out)
    dice_lesion = [k for k in rows[0] if k.startswith("dice_") and is_lesion_key(k)]
    plot([r for r in rows if r["fold"] != ENSEMBLE], out,
         [k for k in (*dice_lesion[:1], "lesion_sensitivity", "lesion_precision", "nsd_lesion") if k in rows[0]])
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
