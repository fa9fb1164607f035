"""`ld-augment synthesize`: preprocessed case folders (or list files of them) -> synthetic CTs + labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ld_augment.cli.common import engine_options_arg, parse_json_arg, read_list_file
from ld_augment.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="draw and texture lesions into preprocessed cases; results land in the source CT's grid",
        description="CASES are case folders written by `ld-augment preprocess`, or list files (.txt) whose lines "
        "are case folders or files inside them (the original's img_list.txt etc. work).",
    )
    p.add_argument("cases", nargs="+", help="case folders or list files")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per case when several)")
    p.add_argument("--engine", default=None, help="set both engines (default: procedural)")
    p.add_argument("--mask-engine", default=None, help="mask engine name (default: procedural)")
    p.add_argument("--texture-engine", default=None, help="texture engine name (default: procedural)")
    p.add_argument("--engine-options", default=None,
                   help='JSON {"mask": {...}, "texture": {...}} (inline or a file), e.g. checkpoint paths')
    p.add_argument("--allow-pickle", action="store_true", help="let checkpoints run pickled code when loaded "
                   "(only for files you trust; never accepted inside --engine-options)")
    p.add_argument("--label-scheme", default=None, help='JSON, default {"background": 0, "organ": 1, "lesion": 2}')
    p.add_argument("--source", default=None, help="the source CT, if it moved since preprocessing (one case only; "
                   "its sha256 must match the recorded one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-standardized", action="store_true", help="also write the standardized-space outputs")
    p.add_argument("--no-preview", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def expand_cases(entries: list[str]) -> list[Path]:
    """Case folders from folders and list files, in order, without duplicates."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        lines = read_list_file(path) if path.is_file() else [entry]
        for line in lines:
            p = Path(line)
            p = p.parent if p.is_file() else p
            if p not in found:
                found.append(p)
    return found


def run(args: argparse.Namespace) -> int:
    from ld_augment.pipeline.batch import run_batch
    from ld_augment.pipeline.synthesize import make_engines, synthesize_case

    cases = expand_cases(args.cases)
    if args.source and len(cases) != 1:
        raise ConfigError(f"--source names the source CT of one case, but {len(cases)} cases were given")
    scheme = parse_json_arg(args.label_scheme, "--label-scheme") if args.label_scheme else None
    names = {"mask": args.mask_engine or args.engine or "procedural",
             "texture": args.texture_engine or args.engine or "procedural"}
    options = engine_options_arg(args.engine_options, allow_pickle=args.allow_pickle, engines=names)
    # engines are built once for the whole batch (weights load and hash once)
    mask, texture = make_engines(names["mask"], names["texture"], options=options, device=args.device)
    out = Path(args.out)

    def job(case_dir: Path):
        target = out if len(cases) == 1 else out / case_dir.name
        result = synthesize_case(case_dir, target, mask_engine=mask, texture_engine=texture, seed=args.seed,
                                 label_scheme=scheme, keep_standardized=args.keep_standardized,
                                 device=args.device, preview=not args.no_preview, source_image=args.source)
        for lesion in result.lesions:
            secs = lesion["seconds"]
            print(f"{case_dir.name} lesion {lesion['index']}: {lesion['voxels_std']} voxels, "
                  f"mask {secs['mask']:.2f}s, texture {secs['texture']:.2f}s", file=sys.stderr)
        return result

    if len(cases) == 1:  # one case: its error is the command's error (one line, exit 2)
        job(cases[0])
        return 0
    report = run_batch([(c.name, c) for c in cases], job, desc="synthesize", progress=not args.no_progress)
    print(report.table(), file=sys.stderr)
    return report.exit_code
