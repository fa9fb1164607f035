"""Seconds per lesion and peak memory of the procedural engine (the weight-free baseline), by lesion size.

Runs on the real CT crop with its TotalSegmentator v2 segmentation resampled to 1 mm (the standardized grid
the engines see), or on a generated CT of the same size when the shared data is absent. Each lesion is
placed in the liver, masked, rendered and measured; the table reports the median seconds of each step over
``--repeats`` lesions and the tracemalloc peak of one full lesion, and the ratio to the 5 s/lesion target.

    python benchmarks/bench_procedural.py [--sizes 10 20 30 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc

import numpy as np

from ld_augment.engines import create_mask_engine, create_texture_engine, measure_adherence
from ld_augment.engines.base import LesionContext
from ld_augment.placement.bboxes import place_lesions
from ld_augment.reports import LesionReport
from ld_augment.settings import test_data_dir

TARGET_S = 5.0
LIVER = 5


def load_case() -> tuple[np.ndarray, np.ndarray, str]:
    """CT (float32 HU) and labels at 1 mm: the real crop when available, else a generated abdomen."""
    ct_path = test_data_dir() / "ct" / "abdomen_ct_3mm_crop.nii.gz"
    seg_path = test_data_dir() / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"
    if ct_path.is_file() and seg_path.is_file():
        import nibabel as nib
        from nibabel.processing import resample_to_output

        ct = resample_to_output(nib.load(str(ct_path)), voxel_sizes=(1.0, 1.0, 1.0), order=1)
        seg = resample_to_output(nib.load(str(seg_path)), voxel_sizes=(1.0, 1.0, 1.0), order=0)
        return np.asarray(ct.dataobj, np.float32), np.asarray(seg.dataobj).astype(np.int16), "real CT crop"
    shape = (366, 303, 90)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    liver = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, (120, 150, 45), (90, 80, 60))) <= 1.0
    rng = np.random.default_rng(0)
    ct = (np.where(liver, 55.0, -80.0) + 20.0 * rng.standard_normal(shape)).astype(np.float32)
    return ct, liver.astype(np.int16) * LIVER, "generated CT"


def report_for(size_mm: int) -> LesionReport:
    return LesionReport(organ_id=LIVER).with_values(
        shape="irregular", density="hypodense lesion", density_variations="heterogeneous",
        surface_characteristics="ill-defined margin", specific_features=["presence of decreased density areas"],
        size=(size_mm, size_mm, size_mm))


def one_lesion(ctx: LesionContext, report: LesionReport, rng: np.random.Generator) -> dict[str, float]:
    """Time placement, mask, texture and adherence for one lesion."""
    t0 = time.perf_counter()
    (box,) = place_lesions(ctx.organ_mask, [report.size], cavity=None, rng=rng, organ_name="liver", shrink=True)
    t1 = time.perf_counter()
    mask = create_mask_engine("procedural").generate_mask(ctx, box, report, rng)
    t2 = time.perf_counter()
    after = create_texture_engine("procedural").render(ctx, mask, report, rng)
    t3 = time.perf_counter()
    measure_adherence(ctx.ct, after, mask, ctx.organ_mask, report, ctx.spacing, organ_name="liver")
    t4 = time.perf_counter()
    return {"place": t1 - t0, "mask": t2 - t1, "texture": t3 - t2, "adherence": t4 - t3, "total": t4 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 30, 40], help="lesion sizes (mm, cubic)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ct, seg, source = load_case()
    organ = seg == LIVER
    ctx = LesionContext(ct=ct, organ_seg=seg, organ_mask=organ, organ_name="liver", spacing=(1.0, 1.0, 1.0),
                        occupied=np.zeros_like(organ))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"device: CPU {platform.processor() or platform.machine()} ({cores} cores usable), numpy {np.__version__}")
    print(f"volume: {source}, {ct.shape} at 1 mm ({ct.size / 1e6:.1f} M voxels), liver {int(organ.sum())} voxels")
    print(f"{'size mm':>7} {'place s':>8} {'mask s':>7} {'texture s':>9} {'adher. s':>8} {'total s':>8} "
          f"{'vs 5 s':>7} {'peak MiB':>8}")
    rng = np.random.default_rng(args.seed)
    for size in args.sizes:
        report = report_for(size)
        one_lesion(ctx, report, rng)  # warm-up (imports, caches)
        runs = [one_lesion(ctx, report, rng) for _ in range(args.repeats)]
        tracemalloc.start()
        one_lesion(ctx, report, rng)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        print(f"{size:>7} {med['place']:>8.3f} {med['mask']:>7.3f} {med['texture']:>9.3f} {med['adherence']:>8.3f} "
              f"{med['total']:>8.3f} {med['total'] / TARGET_S:>7.3f} {peak:>8.1f}")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
