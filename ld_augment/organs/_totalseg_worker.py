"""Child-process entry point for TotalSegmentator (run as `python -m ld_augment.organs._totalseg_worker ARGS.json`).

TotalSegmentator rewrites nnUNet_* environment variables and its own config while it runs; confining it to
this short-lived process keeps the caller's nnU-Net set-up intact.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as fh:
        args = json.load(fh)
    from totalsegmentator.python_api import totalsegmentator

    totalsegmentator(
        args["input"], args["output"], ml=True, fast=args["fast"], roi_subset=args["roi_subset"],
        device=args["device"], quiet=True, statistics=False, task="total",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
