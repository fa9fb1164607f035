"""`ld-augment nnunet ...`: make nnU-Net find nnUNetTrainerLesionDiffusion (shim folder or installed shim)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_trainers.cli import add_nnunet_parser  # argparse wiring only; nnunetv2 is imported lazily

    add_nnunet_parser(subparsers)
