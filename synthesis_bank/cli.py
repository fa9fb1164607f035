"""`synthesis-bank build | merge | prepare`: argparse only; every job is a function in this package.

`add_bank_parsers(subparsers)` lets `ld-augment bank ...` mount the very same commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from ld_augment.errors import ConfigError, LdAugmentError

EXIT_FAILED_CASES = 1
EXIT_ERROR = 2


def _shard_arg(text: str) -> tuple[int, int]:
    from synthesis_bank.plan import parse_shard

    try:
        return parse_shard(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build(args: argparse.Namespace) -> int:
    from synthesis_bank.builder import build_bank

    summary = build_bank(args.recipe, args.out, resume=args.resume, shard=args.shard, progress=not args.no_progress)
    print(summary.format_table())
    return 0 if summary.ok else EXIT_FAILED_CASES


def _merge(args: argparse.Namespace) -> int:
    from synthesis_bank.manifest import merge_manifests, read_manifest

    path = merge_manifests(args.dir)
    entries = read_manifest(path)
    failed = sum(1 for e in entries if e.get("status") != "ok")
    print(f"merged {len(entries)} case(s) ({failed} failed) into {path}")
    return 0 if not failed else EXIT_FAILED_CASES


def _prepare_unavailable(args: argparse.Namespace) -> int:
    raise ConfigError(f"`prepare` is not available: {args.prepare_import_error}")


def _add_prepare(subparsers: Any) -> None:
    """MOUNT POINT for `prepare`, which synthesis_bank/prepare.py defines with `add_prepare_parser(subparsers)`.

    The module is imported here, when the parsers are built, but it imports nnU-Net only inside its
    functions; if it is missing, `prepare` still parses and then fails with a clear message."""
    try:
        from synthesis_bank.prepare import add_prepare_parser  # type: ignore[attr-defined]
    except ImportError as exc:
        parser = subparsers.add_parser("prepare", help="preprocess the bank with a target dataset's nnU-Net plans "
                                                       "(unavailable in this install)")
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(func=_prepare_unavailable, prepare_import_error=f"synthesis_bank.prepare: {exc}")
        return
    add_prepare_parser(subparsers)


def add_bank_parsers(subparsers: Any) -> None:
    """Add `build`, `merge` and `prepare` to an argparse subparsers object; each sets `func(args) -> int`."""
    build = subparsers.add_parser("build", help="synthesize a bank of lesion cases into an nnU-Net raw dataset")
    build.add_argument("--recipe", required=True, help="recipe file (.yaml/.yml/.json)")
    build.add_argument("--out", required=True, help="output folder (an nnU-Net raw dataset, e.g. Dataset501_Bank)")
    build.add_argument("--resume", action="store_true", help="finish an interrupted build: skip finished cases, "
                                                              "redo partial and failed ones")
    build.add_argument("--shard", type=_shard_arg, default=None, metavar="I/N",
                       help="build only shard I of N (0-based; default: torchrun RANK/WORLD_SIZE, else all)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    merge = subparsers.add_parser("merge", help="join shard manifests into manifest.jsonl and update dataset.json")
    merge.add_argument("dir", help="bank folder holding manifest.shard-*-of-*.jsonl")
    merge.set_defaults(func=_merge)

    _add_prepare(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthesis-bank", description="Build and prepare synthetic lesion banks "
                                                                        "for nnU-Net v2 training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of each case")
    add_bank_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: 0 = all cases ok, 1 = some cases failed, 2 = usage/config/input error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except LdAugmentError as exc:
        print(f"synthesis-bank: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
