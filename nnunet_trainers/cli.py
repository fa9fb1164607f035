"""`ld-augment nnunet ...` subcommands (argparse only). The integrator mounts `add_nnunet_parser(subparsers)`.

Nothing here imports nnunetv2: `install-shim` finds nnU-Net's folder with importlib, `ext-dir` only prints and
`export` imports nnU-Net when it runs.
"""

from __future__ import annotations

import argparse


def add_nnunet_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `nnunet` with `install-shim [--uninstall]`, `ext-dir` and `export`; the namespace's `func(args)` returns 0."""
    p = subparsers.add_parser("nnunet", help="make nnUNetTrainerLesionDiffusion visible to nnU-Net")
    sub = p.add_subparsers(dest="nnunet_command", required=True)
    shim = sub.add_parser("install-shim", help="write a shim module into nnunetv2's trainer variants folder")
    shim.add_argument("--uninstall", action="store_true", help="remove the shim module again")
    shim.set_defaults(func=run_install_shim)
    ext = sub.add_parser("ext-dir", help="print the folder to use as nnUNet_extTrainer")
    ext.set_defaults(func=run_ext_dir)
    exp = sub.add_parser("export", help="write a trained model as the stock nnUNetTrainer (plain nnU-Net predicts "
                                        "with it; the bank provenance goes into ld_augment_provenance.json)")
    exp.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    exp.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 3d_fullres")
    exp.add_argument("-tr", dest="trainer", required=True, help="the trainer the model was trained with")
    exp.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    exp.add_argument("-f", dest="folds", nargs="+", default=None, help="folds to export (default: all)")
    exp.add_argument("-o", dest="out", required=True, help="new results root (use as nnUNet_results)")
    exp.add_argument("--results", default=None, help="results root of the trained model (default $nnUNet_results)")
    exp.set_defaults(func=run_export)
    name = sub.add_parser("run-name", help="print the trainer name of a run with this bank and ratio (its results "
                                           "folder is <name>__<plans>__<configuration>)")
    name.add_argument("--bank", default=None, help="bank folder (needed for a ratio above 0)")
    name.add_argument("--ratio", type=float, required=True, help="bank ratio in [0, 1]")
    name.add_argument("--trainer", default="nnUNetTrainerLesionDiffusion", help="base trainer (a variant of ours)")
    name.set_defaults(func=run_run_name)
    return p


def run_install_shim(args: argparse.Namespace) -> int:
    from nnunet_trainers.shim import install_shim

    path = install_shim(uninstall=args.uninstall)
    print(f"{'removed' if args.uninstall else 'installed'} {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from nnunet_trainers.export import export_model

    result = export_model(args.dataset, args.configuration, args.trainer, args.out, plans_identifier=args.plans,
                          results_root=args.results, folds=args.folds)
    print(f"exported {len(result.checkpoints)} checkpoint(s) of {', '.join(result.folds)} -> {result.destination}")
    print(f"predict with plain nnU-Net: nnUNet_results={args.out} nnUNetv2_predict -d {args.dataset} "
          f"-c {args.configuration} -p {args.plans} -tr nnUNetTrainer -f ... -i IN -o OUT")
    return 0


def run_run_name(args: argparse.Namespace) -> int:
    from nnunet_trainers.config import parse_ratio
    from nnunet_trainers.identity import run_name

    ratio = parse_ratio(args.ratio, "--ratio")
    print(run_name(args.trainer, ratio, args.bank if ratio > 0 else None))
    return 0


def run_ext_dir(args: argparse.Namespace) -> int:
    from nnunet_trainers.shim import ext_trainer_dir

    print(ext_trainer_dir())
    return 0
