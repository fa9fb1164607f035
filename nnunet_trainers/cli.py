"""`ld-augment nnunet ...` subcommands (argparse only). The integrator mounts `add_nnunet_parser(subparsers)`.

Nothing here imports nnunetv2: `install-shim` finds nnU-Net's folder with importlib, and `ext-dir` only prints.
"""

from __future__ import annotations

import argparse


def add_nnunet_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `nnunet` with `install-shim [--uninstall]` and `ext-dir`; the namespace's `func(args)` returns 0."""
    p = subparsers.add_parser("nnunet", help="make nnUNetTrainerLesionDiffusion visible to nnU-Net")
    sub = p.add_subparsers(dest="nnunet_command", required=True)
    shim = sub.add_parser("install-shim", help="write a shim module into nnunetv2's trainer variants folder")
    shim.add_argument("--uninstall", action="store_true", help="remove the shim module again")
    shim.set_defaults(func=run_install_shim)
    ext = sub.add_parser("ext-dir", help="print the folder to use as nnUNet_extTrainer")
    ext.set_defaults(func=run_ext_dir)
    return p


def run_install_shim(args: argparse.Namespace) -> int:
    from nnunet_trainers.shim import install_shim

    path = install_shim(uninstall=args.uninstall)
    print(f"{'removed' if args.uninstall else 'installed'} {path}")
    return 0


def run_ext_dir(args: argparse.Namespace) -> int:
    from nnunet_trainers.shim import ext_trainer_dir

    print(ext_trainer_dir())
    return 0
