"""Bank build throughput with the procedural engine: cases per minute, and the builder's overhead.

Baseline (same run, same machine): the same cases made by calling `preprocess_case` + `synthesize_case`
directly in a loop. The ratio shows what the bank's bookkeeping (hashing, atomic moves, fsynced manifest
lines, dataset.json) costs on top of the synthesis itself.

    PYTHONPATH=. python benchmarks/bench_bank.py [--sources 2] [--variants 3] [--ct PATH --seg PATH]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ld_augment.pipeline import preprocess_case, synthesize_case
from ld_augment.resources import example_ct, example_segmentation
from synthesis_bank.builder import build_bank
from synthesis_bank.plan import plan_build
from synthesis_bank.recipe import Recipe


def _recipe(list_file: Path, variants: int) -> Recipe:
    return Recipe.from_dict({
        "sources": {"list_file": str(list_file)},
        "organs": ["liver"],
        "lesion_types": {"hepatocellular carcinoma": 0.5, "metastasis": 0.3, "cyst": 0.2},
        "lesions_per_case": [1, 2],
        "variants_per_source": variants,
        "shrink": True,
        "segmentation": "error",
        "seed": 0,
    }, origin="bench recipe", base_dir=list_file.parent)


def _direct(recipe: Recipe, work: Path) -> float:
    """The baseline: every planned case through the pipeline functions, no bank bookkeeping."""
    t0 = time.perf_counter()
    for item in plan_build(recipe):
        case = preprocess_case(str(item.source.image), work / item.case_id / "case", organ=item.organ,
                               lesion_type=item.lesion_type, seg=str(item.source.seg),
                               attributes=dict(item.attributes) or None, num_lesions=item.num_lesions,
                               seed=item.seed, shrink=True, case_id=item.case_id, preview=False)
        synthesize_case(case.case_dir, work / item.case_id / "synth", seed=item.seed, preview=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=2, help="copies of the CT used as distinct sources")
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--ct", type=Path, default=None, help="CT (default: the bundled example crop)")
    parser.add_argument("--seg", type=Path, default=None, help="its TotalSegmentator segmentation")
    args = parser.parse_args()
    ct, seg = args.ct or example_ct(), args.seg or example_segmentation()
    with tempfile.TemporaryDirectory(prefix="bench_bank_") as tmp:
        tmp_path = Path(tmp)
        lines = []
        for i in range(args.sources):
            copy = tmp_path / "sources" / f"src{i:02d}.nii.gz"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ct, copy)
            lines.append(f"{copy},{seg}")
        (tmp_path / "sources.txt").write_text("\n".join(lines) + "\n")
        recipe = _recipe(tmp_path / "sources.txt", args.variants)
        n = len(plan_build(recipe))
        direct_s = _direct(recipe, tmp_path / "direct")
        t0 = time.perf_counter()
        summary = build_bank(recipe, tmp_path / "Dataset999_Bench", progress=False)
        bank_s = time.perf_counter() - t0
    if not summary.ok:
        print(summary.format_table())
    print(f"device: CPU ({platform.processor() or platform.machine()}), python {platform.python_version()}")
    print(f"cases: {n} ({args.sources} sources x {args.variants} variants), ok: {len(summary.done)}")
    print(f"direct pipeline loop : {n / direct_s * 60:8.1f} cases/min ({direct_s:.1f} s)")
    print(f"build_bank           : {n / bank_s * 60:8.1f} cases/min ({bank_s:.1f} s)")
    print(f"bank / direct time   : {bank_s / direct_s:8.3f}x")


if __name__ == "__main__":
    main()
