"""`ld-augment preprocess`: one CT (--image ...) or the original's `FILELIST EXP_NAME ATTRIBUTES` form."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ld_augment.cli.common import parse_attr, parse_json_arg, parse_num_lesions, parse_spacing, read_list_file
from ld_augment.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="standardize a CT, find the organ, write the report and place lesion boxes",
        description="Two forms. One CT: --image ct.nii.gz --organ liver --lesion-type 'hepatocellular carcinoma' "
        "--out DIR. The original's: FILELIST EXP_NAME ATTRIBUTES, where FILELIST lists CT paths (optionally "
        "'ct,seg' per line), EXP_NAME is the output folder and ATTRIBUTES a JSON object (inline or a file) with "
        "'organ', 'lesion_type' and attribute values; writes img_list/seg_list/type_list/bbox_list.txt.",
    )
    p.add_argument("legacy", nargs="*", metavar="FILELIST EXP_NAME ATTRIBUTES", help="the original's form")
    p.add_argument("--image", help="CT NIfTI file (never modified)")
    p.add_argument("--seg", help="organ segmentation in the CT's grid (TotalSegmentator v1/v2 ids or binary); "
                   "without it TotalSegmentator runs")
    p.add_argument("--avoid", metavar="LABELMAP", help="label map in the CT's grid whose voxels > 0 no lesion may "
                   "touch (e.g. a real tumour already there); single-CT form")
    p.add_argument("--organ", help="target organ, e.g. liver, kidney_left, 'urinary bladder'")
    p.add_argument("--lesion-type", help="lesion type, e.g. 'hepatocellular carcinoma', cyst, metastasis")
    p.add_argument("--attr", action="append", metavar="NAME=VALUE", help="fix a report attribute (repeatable)")
    p.add_argument("--num-lesions", type=parse_num_lesions, default=1)
    p.add_argument("--spacing", type=parse_spacing, default=(1.0, 1.0, 1.0), help="target spacing in mm (1 or 3 values)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shrink", action="store_true", help="shrink lesions that do not fit instead of failing")
    p.add_argument("--llm", action="store_true", help="write the report with an OpenAI-compatible LLM "
                   "(OPENAI_BASE_URL / OPENAI_API_KEY / --llm-model) instead of the offline writer")
    p.add_argument("--llm-model", help="model name for --llm (default: $LD_LLM_MODEL)")
    p.add_argument("--llm-base-url", help="base URL for --llm (default: $OPENAI_BASE_URL)")
    p.add_argument("--fast", action="store_true", help="TotalSegmentator fast mode (when --seg is not given)")
    p.add_argument("--device", default="cpu", help="TotalSegmentator device")
    p.add_argument("--totalseg-statistics", action="store_true",
                   help="allow TotalSegmentator's usage statistics (off by default)")
    p.add_argument("--out", help="output case folder (single-CT form)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _writer(args: argparse.Namespace):
    if not args.llm:
        return None
    from ld_augment.reports.llm import LLMReportWriter

    return LLMReportWriter(base_url=args.llm_base_url, model=args.llm_model)


def run(args: argparse.Namespace) -> int:
    from ld_augment.pipeline.preprocess import preprocess_case

    seg_opts = {"fast": args.fast, "device": args.device, "statistics": args.totalseg_statistics}
    if args.legacy:
        if args.avoid:
            raise ConfigError("--avoid is for the single-CT form (--image ...); the FILELIST form has one CT per line")
        return _run_legacy(args, seg_opts)
    missing = [flag for flag, v in (("--image", args.image), ("--organ", args.organ),
                                    ("--lesion-type", args.lesion_type), ("--out", args.out)) if not v]
    if missing:
        raise ConfigError(f"preprocess needs {', '.join(missing)} (or the FILELIST EXP_NAME ATTRIBUTES form)")
    # one CT: its error is the command's error (one line, exit 2), not a failed row of a batch table (exit 1)
    preprocess_case(args.image, args.out, organ=args.organ, lesion_type=args.lesion_type, seg=args.seg,
                    attributes=parse_attr(args.attr), num_lesions=args.num_lesions, spacing=args.spacing,
                    report_writer=_writer(args), seed=args.seed, shrink=args.shrink, avoid=args.avoid,
                    segment_options=seg_opts)
    print(f"case folder: {args.out}")
    return 0


def _run_legacy(args: argparse.Namespace, seg_opts: dict) -> int:
    from ld_augment.io.atomic import atomic_write_text
    from ld_augment.io.nifti import strip_nifti_suffix
    from ld_augment.pipeline.batch import run_batch
    from ld_augment.pipeline.case import CASE_FILES
    from ld_augment.pipeline.preprocess import preprocess_case

    if len(args.legacy) != 3:
        raise ConfigError(f"the original form takes exactly FILELIST EXP_NAME ATTRIBUTES, got {args.legacy}")
    filelist, exp_name, attributes = args.legacy
    attrs = {k.replace("_", " "): str(v) for k, v in parse_json_arg(attributes, "ATTRIBUTES").items()}
    organ = attrs.pop("organ", None) or args.organ
    lesion_type = attrs.pop("lesion type", None) or args.lesion_type
    if not organ or not lesion_type:
        raise ConfigError("ATTRIBUTES must name 'organ' and 'lesion_type' (or pass --organ/--lesion-type)")
    exp = Path(exp_name)
    items = []
    for i, line in enumerate(read_list_file(filelist)):
        ct, _, seg = (part.strip() for part in line.partition(","))
        items.append((f"{i:04d}_{Path(ct).name}", (i, ct, seg or None)))

    def job(item):
        i, ct, seg = item
        name = strip_nifti_suffix(Path(ct).name) or Path(ct).name
        return preprocess_case(ct, exp / "cases" / f"{i:04d}_{name}", organ=organ, lesion_type=lesion_type,
                               seg=seg, attributes=attrs, num_lesions=args.num_lesions, spacing=args.spacing,
                               report_writer=_writer(args), seed=args.seed + i, shrink=args.shrink,
                               segment_options=seg_opts)

    report = run_batch(items, job, desc="preprocess", progress=not args.no_progress)
    done = [o.result for o in report.outcomes if o.ok]
    for list_name, key in (("img_list", "ct"), ("seg_list", "organs"), ("type_list", "report"), ("bbox_list", "bboxes")):
        atomic_write_text(exp / f"{list_name}.txt", "".join(f"{c.case_dir / CASE_FILES[key]}\n" for c in done))
    atomic_write_text(exp / "case_list.txt", "".join(f"{c.case_dir}\n" for c in done))
    print(report.table(), file=sys.stderr)
    return report.exit_code
