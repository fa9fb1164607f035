"""What the bank's guards cost and save, each against a baseline measured in the same run.

1. Memory guard: seconds to refuse a small file with 15 mm voxels (header-only estimate) vs. seconds to merely
   load and validate it (`load_ct`, what used to happen before resampling ran away); and for a real-sized
   volume, the estimate vs. the peak traced while `standardize_image` really runs (must be >= 1x, near it).
2. Bookkeeping: rewriting dataset.json after each case (the price of "valid at every instant") and verifying
   a finished case by size + sha256 on `--resume`, vs. the old existence check; for N manifest lines.

    PYTHONPATH=. python benchmarks/bench_bank_guards.py [--lines 100 1000] [--shape 256 256 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np

from ld_augment.errors import InputError
from ld_augment.io.nifti import load_ct
from ld_augment.io.standardize import check_memory_budget, estimate_standardize_bytes, standardize_image
from synthesis_bank.manifest import (
    ManifestWriter, case_files_exist, case_files_verified, file_record, image_path, label_path, write_dataset_json,
)


def _ct(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = np.full(shape, -1000, np.int16)
    data[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 40
    data[tuple(slice(n // 2 - 2, n // 2 + 2) for n in shape)] = 400
    return data + rng.integers(0, 20, shape, dtype=np.int16)


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_guard(tmp: Path, shape: tuple[int, int, int]) -> None:
    coarse = tmp / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(_ct((100, 100, 100)), np.diag([15.0, 15.0, 15.0, 1.0])), str(coarse))

    def refuse() -> None:
        try:
            check_memory_budget(nib.load(str(coarse)), (1.0, 1.0, 1.0), name=str(coarse))
        except InputError:
            return
        raise AssertionError("not refused")

    t_refuse = _timed(refuse)
    t_load = _timed(lambda: load_ct(coarse))
    est, out_shape = estimate_standardize_bytes((100, 100, 100), np.diag([15.0, 15.0, 15.0, 1.0]), (1, 1, 1), 2)
    print(f"15 mm file ({coarse.stat().st_size / 1e3:.0f} kB, 100^3 -> {out_shape} at 1 mm, est. {est / 2**30:.1f} GB)")
    print(f"  refused by the header-only guard   {t_refuse * 1e3:9.2f} ms")
    print(f"  baseline: load_ct of the same file {t_load * 1e3:9.2f} ms   (guard/baseline {t_refuse / t_load:.3f})")

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(_ct(shape), affine)
    est, out_shape = estimate_standardize_bytes(shape, affine, (1.0, 1.0, 1.0), 2)
    tracemalloc.start()
    t0 = time.perf_counter()
    standardize_image(img, (1.0, 1.0, 1.0))
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"standardize {shape} at (0.8, 0.8, 2.5) mm -> {out_shape} at 1 mm ({seconds:.2f} s)")
    print(f"  estimate {est / 2**20:9.1f} MiB   measured peak (tracemalloc) {peak / 2**20:9.1f} MiB   "
          f"estimate/peak {est / peak:.2f}")


def bookkeeping(tmp: Path, lines: int) -> None:
    out = tmp / f"bank{lines}"
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    payload = np.random.default_rng(0).integers(0, 255, 2_000_000, dtype=np.uint8).tobytes()  # ~2 MB per image
    with ManifestWriter(out / "manifest.jsonl") as writer:
        for i in range(lines):
            cid = f"case{i:05d}_syn000"
            image_path(out, cid).write_bytes(payload if i == 0 else b"x" * 1000)
            label_path(out, cid).write_bytes(b"y" * 100)
            writer.append({"case_id": cid, "status": "ok", "reports": {"5": [["round-like"]] * 20},
                           "files": {"image": file_record(image_path(out, cid)),
                                     "label": file_record(label_path(out, cid))}})
    base = {"labels": {"background": 0, "organ": 1, "lesion": 2}, "name": "Bench", "ld_augment": {}}
    t_json = _timed(lambda: write_dataset_json(out, base))
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    t_verify = _timed(lambda: case_files_verified(out, entry), repeat=5)
    t_exist = _timed(lambda: case_files_exist(out, entry["case_id"]), repeat=5)
    print(f"{lines} manifest lines")
    print(f"  dataset.json rewrite after a case    {t_json * 1e3:9.2f} ms")
    print(f"  resume check of a 2 MB case: size+sha256 {t_verify * 1e3:8.2f} ms   baseline exists() "
          f"{t_exist * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 120])
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, nibabel {nib.__version__}, "
          f"{platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="bench_guards_") as tmp:
        memory_guard(Path(tmp), tuple(args.shape))
        for n in args.lines:
            bookkeeping(Path(tmp), n)


if __name__ == "__main__":
    main()
