"""`synthesis-bank build | merge | materialize | prepare | compare`: argparse only; every job is a function in this package.

`add_bank_parsers(subparsers)` lets `ld-augment bank ...` mount the very same commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ld_augment.cli.common import EXIT_ERROR, int_in_range, run_command
from ld_augment.errors import ConfigError

EXIT_FAILED_CASES = 1


def _shard_arg(text: str) -> tuple[int, int]:
    from synthesis_bank.plan import parse_shard

    try:
        return parse_shard(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _check_out_location(out: str | Path) -> None:
    """Refuse a bank inside our own packages; warn about one inside a source checkout (issue 22)."""
    from ld_augment.settings import source_tree_of

    found = source_tree_of(out)
    if found is None:
        return
    kind, where = found
    if kind == "package":
        raise ConfigError(f"--out {out} lies inside the installed package {where}; write the bank elsewhere")
    logging.getLogger("synthesis_bank").warning(
        "--out %s lies inside the ld-augment source checkout %s: GBs of NIfTI there end up in git status, "
        "editable installs and test runs; prefer a folder outside it", out, where)


def _build(args: argparse.Namespace) -> int:
    from synthesis_bank.builder import build_bank

    _check_out_location(args.out)
    summary = build_bank(args.recipe, args.out, resume=args.resume, shard=args.shard, progress=not args.no_progress,
                         allow_pickle=args.allow_pickle, force_recipe_change=args.force_recipe_change,
                         case_timeout_s=args.case_timeout, llm_timeout_s=args.llm_timeout, llm_retries=args.llm_retries,
                         batch_cases=args.batch_cases)
    print(summary.format_table())
    if summary.stopped:
        print(f"synthesis-bank: error: build stopped: {summary.stopped}", file=sys.stderr)
        return EXIT_ERROR
    return 0 if summary.ok else EXIT_FAILED_CASES


def _merge(args: argparse.Namespace) -> int:
    from synthesis_bank.merge import merge_bank

    result = merge_bank(args.dir)
    print(f"merged {result.cases} case(s) ({result.ok} ok, {result.failed} failed) into {result.manifest}; "
          f"dataset.json lists {result.listed}")
    return 0 if not result.failed else EXIT_FAILED_CASES


def _materialize(args: argparse.Namespace) -> int:
    from synthesis_bank.materialize import materialize_bank

    result = materialize_bank(args.dir, progress=not args.no_progress)
    print(f"materialized {len(result.written)} case(s), {len(result.present)} already present -> "
          f"{Path(args.dir) / 'imagesTr'}")
    return 0


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
    add_prepare_parser(subparsers)  # prepare_bank takes the bank lock itself, from every entry point


def add_bank_parsers(subparsers: Any) -> None:
    """Add `build`, `merge`, `prepare` and `compare` to an argparse subparsers object; each sets `func(args) -> int`."""
    build = subparsers.add_parser("build", help="synthesize a bank of lesion cases into an nnU-Net raw dataset")
    build.add_argument("--recipe", required=True, help="recipe file (.yaml/.yml/.json)")
    build.add_argument("--out", required=True, help="output folder (an nnU-Net raw dataset, e.g. Dataset501_Bank)")
    build.add_argument("--resume", action="store_true", help="finish an interrupted build: skip finished cases, "
                                                              "redo partial and failed ones")
    build.add_argument("--shard", type=_shard_arg, default=None, metavar="I/N",
                       help="build only shard I of N (0-based; default: torchrun RANK/WORLD_SIZE, else all)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument("--allow-pickle", action="store_true",
                       help="let engine checkpoints run pickled code when loaded (only for checkpoints you trust; "
                            "recipes cannot ask for it; recorded in bank.json and the manifest)")
    build.add_argument("--force-recipe-change", action="store_true",
                       help="resume although the recipe changed since the first build (recorded in bank.json)")
    build.add_argument("--case-timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="fail a case that runs longer than this (default: no limit)")
    build.add_argument("--batch-cases", type=int_in_range(1), default=1, metavar="N",
                       help="make N cases at once, their lesions sharing diffusion-network calls (GPU throughput; "
                            "N cases in memory; not with --case-timeout; default 1)")
    build.add_argument("--llm-timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="LLM report writer: seconds per request (default: the recipe's, else 30)")
    build.add_argument("--llm-retries", type=int_in_range(0, 20), default=None, metavar="N",
                       help="LLM report writer: retries after a failed request (default: the recipe's, else 3)")
    build.set_defaults(func=_build)

    merge = subparsers.add_parser("merge", help="join shard manifests into manifest.jsonl and update dataset.json")
    merge.add_argument("dir", help="bank folder holding manifest.shard-*-of-*.jsonl")
    merge.set_defaults(func=_merge)

    materialize = subparsers.add_parser(
        "materialize", help="write a patches bank's full cases into imagesTr/labelsTr (for stock nnU-Net tools)")
    materialize.add_argument("dir", help="bank folder built with `storage: patches`")
    materialize.add_argument("--no-progress", action="store_true", help="no progress bar")
    materialize.set_defaults(func=_materialize)

    _add_prepare(subparsers)
    _add_compare(subparsers)


def _spacing_arg(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mm, e.g. 1.5 or 0.8,0.8,3, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0 < v < 20 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or three positive spacings in mm, got {text!r}")
    return (values[0], values[1], values[2])


def _compare(args: argparse.Namespace) -> int:
    """Holds the bank's lock (as every entry point does) so it never measures a bank mid-build."""
    from synthesis_bank.compare import run_compare
    from synthesis_bank.lock import bank_lock

    bank = Path(args.bank)
    if not bank.is_dir():  # run_compare names the missing folder itself; a lock must not create it
        return _run_compare(args, run_compare)
    with bank_lock(bank, job="synthesis-bank compare"):
        return _run_compare(args, run_compare)


def _run_compare(args: argparse.Namespace, run_compare: Callable[..., Any]) -> int:
    results = run_compare(args.bank, args.real, args.out, spacing=args.spacing, lesion_labels=args.lesion_label,
                          organ_labels=args.organ_label, real_limit=args.max_real, seed=args.seed)
    for r in results:
        print(f"{r.group}: {r.verdict()} ({r.n_synthetic} synthetic, {r.n_real} real)")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _add_compare(subparsers: Any) -> None:
    compare = subparsers.add_parser("compare", help="compare a bank's lesions with real lesions (features, "
                                                    "two-sample AUC, train-on-synthetic-test-on-real)")
    compare.add_argument("--bank", required=True, help="bank folder (written by synthesis-bank build)")
    compare.add_argument("--real", required=True, help="labelled nnU-Net raw dataset (imagesTr/labelsTr/"
                                                       "dataset.json) or an LIDC nodule folder")
    compare.add_argument("--lesion-label", action="append", default=None, metavar="NAME",
                         help="label name of the real lesions (repeatable; default: names like tumor/lesion/cyst)")
    compare.add_argument("--organ-label", action="append", default=None, metavar="NAME",
                         help="label name of the real organ (repeatable; default: every other label)")
    compare.add_argument("--spacing", type=_spacing_arg, default=(1.0, 1.0, 1.0), metavar="MM",
                         help="common spacing both are resampled to (mm; one value or x,y,z; default 1)")
    compare.add_argument("--max-real", type=int_in_range(1), default=None, metavar="N",
                         help="use at most the first N real cases (LIDC: nodules)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the classifiers and patch sampling")
    compare.add_argument("--out", required=True, help="output folder (report.md, CSVs, plots)")
    compare.set_defaults(func=_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthesis-bank", description="Build and prepare synthetic lesion banks "
                                                                        "for nnU-Net v2 training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of each case")
    add_bank_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: 0 = all cases ok, 1 = some cases failed, 2 = usage/config/input error."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_command(lambda: args.func(args), "synthesis-bank", verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
