#!/usr/bin/env python
"""Time per batch of the mixed (real + bank) loader against nnU-Net's stock loader, on the same data.

    python benchmarks/bench_mixed_loader.py [--cases 20] [--shape 96 96 96] [--patch 64 64 64] [--batches 60]

Both loaders are nnU-Net's `nnUNetDataLoader` over the same Blosc2-preprocessed cases (written once into a
temporary folder); the stock one sees all cases as one dataset, the mixed one sees half of them as "real" and
half as a "bank" through `MixedDataset` at ratio 0.5. Batches alternate between the two so drift on a shared
machine hits both. Without augmentation (the default) the loader does the least work per batch, so
the relative overhead printed is an upper bound; `--transforms` adds nnU-Net's training transforms.
Target: overhead <= 3 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _device import device_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_cases(folder: Path, n: int, shape, patch, rng: np.random.Generator) -> list[str]:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    keys = []
    for i in range(n):
        data = rng.normal(0, 1, (1, *shape)).astype(np.float32)
        seg = np.zeros((1, *shape), np.int16)
        c = np.array(shape) // 2
        seg[0, c[0] - 10:c[0] + 10, c[1] - 10:c[1] + 10, c[2] - 10:c[2] + 10] = 1
        seg[0, c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 2
        props = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1, 2], seed=i),
                 "spacing": [1, 1, 1], "shape_before_cropping": shape, "bbox_used_for_cropping": [[0, s] for s in shape],
                 "shape_after_cropping_and_before_resampling": shape}
        blocks, chunks = comp_blosc2_params(data.shape, tuple(patch), data.itemsize)
        blocks_s, chunks_s = comp_blosc2_params(seg.shape, tuple(patch), seg.itemsize)
        key = f"case_{i:04d}"
        nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / key), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_s, blocks_seg=blocks_s)
        keys.append(key)
    return keys


def make_loaders(folder: Path, keys: list[str], patch, batch_size: int, transforms):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_trainers.mixing import MixedDataset

    lm = LabelManager({"background": 0, "organ": 1, "lesion": 2}, regions_class_order=None)
    half = len(keys) // 2
    stock_ds = nnUNetDatasetBlosc2(str(folder), list(keys))
    real_ds, bank_ds = nnUNetDatasetBlosc2(str(folder), keys[:half]), nnUNetDatasetBlosc2(str(folder), keys[half:])
    mixed_ds = MixedDataset(real_ds, bank_ds, keys[:half], keys[half:], 0.5)
    kw = dict(oversample_foreground_percent=0.33, transforms=transforms)
    return (nnUNetDataLoader(stock_ds, batch_size, patch, patch, lm, **kw),
            nnUNetDataLoader(mixed_ds, batch_size, patch, patch, lm,
                             sampling_probabilities=mixed_ds.sampling_probabilities, **kw))


def training_transforms(patch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer.get_training_transforms(patch, (0, 0), None, (0, 1, 2), False,
                                                 use_mask_for_norm=[False], is_cascaded=False,
                                                 foreground_labels=[1, 2], regions=None, ignore_label=None)


def choice_cost(n_real: int, n_bank: int, ratio: float, batch_size: int, reps: int = 2000) -> tuple[float, float]:
    """Per-batch cost of drawing keys: stock uniform draw over all keys vs the mixed two-stage probabilities."""
    from nnunet_trainers.mixing import MixedDataset

    keys = [f"case_{i:05d}" for i in range(n_real + n_bank)]
    mixed = MixedDataset(None, object(), keys[:n_real], keys[n_real:], ratio)
    out = []
    for ids, p in ((keys, None), (mixed.identifiers, mixed.sampling_probabilities)):
        t = time.perf_counter()
        for _ in range(reps):
            np.random.choice(ids, batch_size, replace=True, p=p)
        out.append((time.perf_counter() - t) / reps)
    return out[0], out[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=300, help="batches per loader (alternating)")
    p.add_argument("--transforms", action="store_true", help="include nnU-Net's training augmentation")
    args = p.parse_args(argv)

    import torch

    from nnunet_trainers.mixing import count_synthetic

    torch.set_num_threads(1)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        keys = write_cases(Path(tmp), args.cases, args.shape, args.patch, np.random.default_rng(0))
        transforms = training_transforms(args.patch) if args.transforms else None
        stock, mixed = make_loaders(Path(tmp), keys, args.patch, args.batch_size, transforms)
        next(stock), next(mixed)   # warm caches (file handles, page cache)
        times = {"stock": [], "mixed": []}
        synthetic = total = 0
        for i in range(args.batches):   # alternate every batch; pairs see the same machine state
            for name, loader in (("stock", stock), ("mixed", mixed)) if i % 2 == 0 else \
                    (("mixed", mixed), ("stock", stock)):
                t = time.perf_counter()
                batch = next(loader)
                times[name].append(time.perf_counter() - t)
                if name == "mixed":
                    s, n = count_synthetic(batch["keys"])
                    synthetic, total = synthetic + s, total + n
    med = {k: float(np.median(v)) for k, v in times.items()}
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    c_stock, c_mixed = choice_cost(1000, 5000, 0.25, args.batch_size)
    print(f"device: {device_name()} | torch {torch.__version__} | numpy {np.__version__} | "
          f"{args.cases} cases {tuple(args.shape)}, patch {tuple(args.patch)}, batch {args.batch_size}, "
          f"transforms={'nnU-Net training' if args.transforms else 'none'}")
    for k in ("stock", "mixed"):
        print(f"{k:>5}: median {med[k] * 1e3:8.2f} ms/batch   mean {mean[k] * 1e3:8.2f} ms/batch   "
              f"({len(times[k])} batches)")
    paired = float(np.median(np.array(times["mixed"]) / np.array(times["stock"])))
    print(f"overhead mixed vs stock: median {100 * (med['mixed'] / med['stock'] - 1):+.2f} %   "
          f"mean {100 * (mean['mixed'] / mean['stock'] - 1):+.2f} %   paired median {100 * (paired - 1):+.2f} %   "
          f"(target <= 3 %)")
    print(f"realized synthetic fraction: {synthetic / max(total, 1):.3f} of {total} samples (ratio 0.5)")
    print(f"key draw per batch, 1000 real + 5000 bank at ratio 0.25: stock {c_stock * 1e6:.1f} us, "
          f"mixed {c_mixed * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
