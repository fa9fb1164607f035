"""`ld-augment <job>`: argparse only. Each job lives in its own module with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ld_augment import __version__
from ld_augment.cli.common import run_command

# Subcommand modules, in the order of the data flow. Each defines add_parser(subparsers) and sets
# `func` on its parser; heavy imports happen inside the handlers so `ld-augment --help` stays fast.
SUBCOMMANDS = (
    "ld_augment.cli.preprocess_cmd",
    "ld_augment.cli.synthesize_cmd",
    "ld_augment.cli.bank_cmd",
    "ld_augment.cli.nnunet_cmd",
    "ld_augment.cli.train_cmd",
    "ld_augment.cli.quickstart_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ld-augment",
        description="Text-controlled lesion synthesis for 3D CT, mixed into nnU-Net v2 training.",
    )
    parser.add_argument("--version", action="version", version=f"ld-augment {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<job>")
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_command(lambda: args.func(args), f"ld-augment {args.command}", verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
