"""`ld-augment quickstart --out DIR`: the whole flow on the bundled example, no weights, no network."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="run preprocess -> synthesize -> bank on the bundled example CT")
    p.add_argument("--out", default="quickstart_out", help="output folder (default: quickstart_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", type=int, default=2, help="bank cases to synthesize")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from synthesis_bank.quickstart import run_quickstart

    result = run_quickstart(args.out, seed=args.seed, variants=args.variants, progress=not args.no_progress)
    print(f"preprocessed case : {result.case_dir}   (preview.png: organ and lesion boxes)")
    print(f"synthetic CT      : {result.synthetic_dir}/ct.nii.gz, label.nii.gz   (preview.png: before/after)")
    print(f"nnU-Net bank      : {result.bank_dir}   (imagesTr, labelsTr, dataset.json, manifest.jsonl, previews/)")
    print(result.bank.format_table())
    return 0 if result.bank.ok else 1
