#!/usr/bin/env python
"""Does the bank help? nnU-Net trained on real cases only vs mixed with the bank, compared case by case.

    python scripts/benchmark_gain.py --dataset D --bank BANK --ratios 0.5 --folds loo --seeds 2 --quick --out OUT
    python scripts/benchmark_gain.py --dataset 3 --bank BANK --ratios 0.25 0.5 --n-real 2,4 --seeds 3 --out OUT \
        --emit-jobs jobs.txt        # one arm x fold x seed per line (SLURM array / one GPU each), then:
    python scripts/benchmark_gain.py --out OUT --merge

The preflight checks every label (dataset.json, the evaluation label files, the bank's mapping) and plans,
preprocesses and prepares the bank before anything trains. Jobs train `nnUNetTrainerLDBench` (seeded, short
schedules on request), predict the test set (imagesTs) or each fold's held-out cases, and evaluate per case
and per lesion. OUT/results.csv (long: arm, ratio, n_real, fold, seed, case, lesion, metric, value),
OUT/results.md (paired differences, hierarchical bootstrap CIs, p values, effect sizes and a verdict that says
when there are too few cases or lesions to conclude), OUT/runs.csv (time and hardware per job) and plots.
The protocol: nnunet_trainers/gain/protocol.py; the statistics: nnunet_trainers/gain/stats.py; README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. 2,4,8") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="nnU-Net dataset id or name (nnUNet_raw/nnUNet_preprocessed set)")
    p.add_argument("--bank", help="bank folder (synthesis-bank build); prepared for the plans here")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5], help="bank ratios of the mixed arms")
    p.add_argument("--folds", nargs="+", default=["auto"],
                   help="loo | cv5 | all | splits (the dataset's splits_final.json) | fold numbers of it | auto "
                        "(cv5 from 5 cases, else loo)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per arm and fold (0..N-1)")
    p.add_argument("--n-real", type=_int_list, default=[], help="learning curve: real training cases, e.g. 2,4")
    p.add_argument("--lesion-label", default=None,
                   help="dataset.json label name (e.g. masses), value (2) or values (2,3); default: the label "
                        "named tumour/cancer/lesion/...")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default=None, help="plans identifier (default nnUNetPlans; --quick: "
                                                       "nnUNetPlansQuick)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true",
                   help="small-data mode: coarse-spacing plans with capped features and a short schedule")
    p.add_argument("--quick-spacing", type=float, default=3.0, help="--quick target spacing in mm")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default nnU-Net's; --quick: 2)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch (default nnU-Net's)")
    p.add_argument("--prepare-labels", nargs="+", default=[], metavar="BANK=TARGET",
                   help="passed to synthesis-bank prepare --labels (e.g. 'renal cell carcinoma=tumor')")
    p.add_argument("--n-boot", type=int, default=4000, help="bootstrap resamples")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--emit-jobs", metavar="FILE", help="run the preflight, write one job command per line, stop")
    mode.add_argument("--job", metavar="ID", help="run one job of OUT/protocol.json (arm/foldF/seedS)")
    mode.add_argument("--merge", action="store_true", help="merge OUT/jobs/* into results.csv/md and plots")
    return p


def _merge(out: Path, n_boot: int) -> str:
    from nnunet_trainers.gain.protocol import Protocol
    from nnunet_trainers.gain.report import merge_jobs, write_report

    from ld_augment.errors import InputError

    protocol = Protocol.load(out / "protocol.json")
    rows = merge_jobs(out)
    done = {(r["arm"], r["fold"], r["seed"]) for r in rows}
    missing = [j.id for j in protocol.jobs() if (j.arm.name, j.fold, j.seed) not in done]
    if missing:
        raise InputError(f"{out / 'jobs'}: {len(missing)} of {len(protocol.jobs())} jobs have no results yet "
                         f"(e.g. {missing[:3]}); run them first")
    runs = [json.loads(f.read_text()) for f in sorted((out / "jobs").glob("*/*/run.json"))]
    return write_report(out, rows, protocol, runs, n_boot=n_boot)


def main(argv: Sequence[str] | None = None) -> int:
    from ld_augment.errors import ConfigError, InputError

    args = parser().parse_args(argv)
    out = Path(args.out).resolve()
    try:
        if args.job:
            import os

            from nnunet_trainers.gain.protocol import Protocol
            from nnunet_trainers.gain.runner import job_environment, run_job

            protocol = Protocol.load(out / "protocol.json")
            job = protocol.job(args.job)
            os.environ.update(job_environment(protocol, job))   # before nnU-Net reads its paths
            run_job(protocol, job)
            return 0
        if args.merge:
            print(_merge(out, args.n_boot))
            return 0
        if not args.dataset or not args.bank:
            raise InputError("--dataset and --bank are required (except with --job or --merge)")
        from nnunet_trainers.gain.protocol import job_command
        from nnunet_trainers.gain.runner import preflight, run_job_subprocess

        device = args.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        protocol = preflight(dataset=args.dataset, bank=args.bank, out=out, ratios=args.ratios, folds=args.folds,
                             seeds=args.seeds, n_real=args.n_real, lesion_label=args.lesion_label,
                             configuration=args.configuration, plans=args.plans, device=device, quick=args.quick,
                             quick_spacing=args.quick_spacing, epochs=args.epochs, iterations=args.iterations,
                             prepare_labels=args.prepare_labels)
        jobs = protocol.jobs()
        script = Path(__file__).resolve()
        if args.emit_jobs:
            from ld_augment.io.atomic import atomic_write_text

            atomic_write_text(Path(args.emit_jobs), "".join(job_command(script, out, j, sys.executable) + "\n"
                                                            for j in jobs))
            print(f"{len(jobs)} jobs written to {args.emit_jobs}; run each line (e.g. sbatch --array=1-{len(jobs)} "
                  f"with `sed -n ${{SLURM_ARRAY_TASK_ID}}p {args.emit_jobs} | bash`), then: "
                  f"python {script} --out {out} --merge")
            return 0
        print(f"[gain] {len(jobs)} jobs: {len(protocol.arms)} arms x {len(protocol.folds)} folds x "
              f"{len(protocol.seeds)} seeds", flush=True)
        for job in jobs:
            run_job_subprocess(protocol, job, script)
        print(_merge(out, args.n_boot))
        return 0
    except (InputError, ConfigError) as e:
        print(f"benchmark_gain: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
