#!/usr/bin/env python
"""Does the bank help? Train nnU-Net real-only and mixed at given ratios, evaluate on the held-out test set.

    python scripts/benchmark_gain.py --dataset 3 --bank BANK --ratios 0.25 0.5 --folds 0 1 --epochs 50 --out OUT
    python scripts/benchmark_gain.py ... --dry-run            # print the commands only

Each arm (real-only = `nnUNetTrainer_<N>epochs`; mixed = `nnUNetTrainerLesionDiffusion_<N>epochs` with
LD_BANK_RATIO=r) trains into its own `OUT/results/<arm>` (set as nnUNet_results for its commands, so arms
sharing a trainer class never overwrite each other), predicts `imagesTs`, and is evaluated against `labelsTs`
with nnU-Net's Dice plus lesion-wise detection (`nnunet_trainers.evaluation`). Writes OUT/results.csv,
OUT/results.md and OUT/gain.png. The bank must be prepared for the dataset (`synthesis-bank prepare`).
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

EPOCHS = (1, 5, 10, 20, 50, 100, 250, 500)   # lengths both nnU-Net and nnunet_trainers ship variants for


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
        for fold in args.folds:
            train = ["nnUNetv2_train", str(args.dataset), args.configuration, str(fold), "-tr", arm.trainer,
                     "-p", args.plans, "-device", args.device]
            pred = ["nnUNetv2_predict", "-i", str(test_images), "-o", str(out / "predictions" / arm.name / f"fold_{fold}"),
                    "-d", str(args.dataset), "-c", args.configuration, "-f", str(fold), "-tr", arm.trainer,
                    "-p", args.plans, "-device", args.device]
            steps += [Step(arm, fold, "train", train, env), Step(arm, fold, "predict", pred, env)]
    return steps


def run_step(step: Step) -> None:
    env = dict(os.environ, **step.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    print(f"$ {step.shell()}", flush=True)
    subprocess.run(step.cmd, env=env, check=True)


def fmt(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv (one row per arm and fold, plus per-arm means) and results.md (means and gain vs real)."""
    from ld_augment.io.atomic import atomic_write_text

    keys = list(rows[0])
    metric_keys = [k for k in keys if k not in ("arm", "ratio", "fold")]
    means = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        sel = [r for r in rows if r["arm"] == arm]
        mean = {"arm": arm, "ratio": sel[0]["ratio"], "fold": "mean"}
        for k in metric_keys:
            vals = [float(r[k]) for r in sel if not math.isnan(float(r[k]))]
            mean[k] = sum(vals) / len(vals) if vals else math.nan
        means.append(mean)
    lines = [",".join(keys)] + [",".join(fmt(r[k]) for k in keys) for r in rows + means]
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    base = means[0]
    md = ["| arm | ratio | " + " | ".join(metric_keys) + " |", "|" + "---|" * (len(metric_keys) + 2)]
    for m in means:
        cells = []
        for k in metric_keys:
            gain = "" if m is base or k.startswith("n_") else f" ({float(m[k]) - float(base[k]):+.4f})"
            cells.append(fmt(m[k]) + gain)
        md.append(f"| {m['arm']} | {m['ratio']} | " + " | ".join(cells) + " |")
    atomic_write_text(out / "results.md", "Mean over folds; in brackets the gain over real-only.\n\n"
                      + "\n".join(md) + "\n")


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


def evaluate_all(args: argparse.Namespace, arms: list[Arm], raw: Path, pre: Path) -> list[dict]:
    from nnunet_trainers.evaluation import evaluate_predictions

    dataset_json = raw / "dataset.json"
    labels = json.loads(dataset_json.read_text())["labels"]
    lesion = args.lesion_label if args.lesion_label is not None else labels.get("lesion")
    if lesion is None:
        raise SystemExit(f"{dataset_json} has no 'lesion' label; pass --lesion-label")
    rows = []
    for arm in arms:
        for fold in args.folds:
            pred = Path(args.out).resolve() / "predictions" / arm.name / f"fold_{fold}"
            metrics = evaluate_predictions(pred, raw / "labelsTs", dataset_json, pre / f"{args.plans}.json",
                                           [int(lesion)], num_processes=args.num_processes)
            rows.append({"arm": arm.name, "ratio": arm.ratio, "fold": fold, **metrics})
    return rows


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
    p.add_argument("--lesion-label", type=int, default=None, help="default: dataset.json label 'lesion'")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="processes for evaluation")
    p.add_argument("--skip-training", action="store_true", help="only predict and evaluate existing models")
    p.add_argument("--evaluate-only", action="store_true", help="only evaluate existing predictions")
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
    steps = plan_steps(args, arms, raw / "imagesTs")
    for step in steps:
        if args.evaluate_only or (args.skip_training and step.kind == "train"):
            continue
        run_step(step)
    rows = evaluate_all(args, arms, raw, pre)
    out = Path(args.out).resolve()
    write_tables(rows, out)
    plot(rows, out, [k for k in ("dice_lesion", "lesion_sensitivity", "lesion_precision") if k in rows[0]])
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
