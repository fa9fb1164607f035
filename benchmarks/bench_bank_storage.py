#!/usr/bin/env python
"""Disk and load time of a patches bank against full copies, for N cases made from S sources, in one run.

    python benchmarks/bench_bank_storage.py [--cases 1000] [--sources 10] [--batches 200] [--patch 64 64 64]

Sources: the shared 3 mm abdominal CT (122 x 101 x 112, stored as int16 like most CTs), S copies with
different seeded noise (so they differ in content), each with a fixed soft-tissue "organ" label. Cases are
fabricated, not synthesized (the procedural engine would take hours for 1,000 cases on 2 cores): each places an
ellipsoid lesion (radius 2-5 voxels, -40..-70 HU, a one-voxel rim at half the change, i.e. a write-back-sized
neighbourhood) at a random position in its source's organ. Both banks hold the very same cases:

* full copies: each case's CT and label written as the builder writes them (`source_image_like`, NIfTI gz);
* patches: each case cut against its source by `synthesis_bank.patch_store.cut_patch`, as `storage: patches`
  builds do (composition is bit-identical: tests/synthesis_bank/test_patch_store.py).

Prepared data: the patches bank goes through `synthesis-bank prepare` (sources once + preprocessed patches under
nnUNet_preprocessed); the full-copy baseline is each composed case saved as its own Blosc2 case, the format
nnU-Net's preprocessor writes (composed == nnU-Net's full preprocessing here; `--verify K` re-checks K cases
against nnU-Net's own run_case). Load time: nnU-Net's `nnUNetDataLoader` (foreground oversampling 0.33, no
augmentation, so the relative overhead is an upper bound) over each, batches alternating, medians printed.
Targets: raw disk <= 15 % of full copies; iteration time within 3 % of full copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _device import device_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CT = "ct/abdomen_ct_3mm.nii.gz"
LABELS = {"background": 0, "organ": 1, "lesion": 2}


def disk(paths) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, files) under the given files/folders."""
    size = blocks = n = 0
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
        for f in files:
            st = f.stat()
            size, blocks, n = size + st.st_size, blocks + st.st_blocks * 512, n + 1
    return size, blocks, n


def make_sources(root: Path, data: Path, n: int) -> list[tuple[Path, Path, np.ndarray]]:
    import nibabel as nib

    img = nib.load(str(data / CT))
    ct = np.asarray(img.dataobj).astype(np.float64)
    sources = []
    for s in range(n):
        rng = np.random.default_rng(100 + s)
        arr = np.clip(np.rint(ct + rng.normal(0, 3, ct.shape)), -1024, 3071).astype(np.int16)
        grid = np.indices(arr.shape).astype(np.float32)
        c = np.array(arr.shape) * np.array([0.55, 0.45, 0.5]) + rng.integers(-3, 4, 3)
        r = np.array(arr.shape) * np.array([0.22, 0.22, 0.25])
        organ = ((((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1) & \
            (arr > -100) & (arr < 200)
        label = organ.astype(np.uint8)
        path = root / "sources" / f"src_{s:02d}_0000.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        out = nib.Nifti1Image(arr, img.affine, img.header)
        out.set_data_dtype(np.int16)
        nib.save(out, str(path))
        lab_path = root / "sources" / f"src_{s:02d}.nii.gz"
        nib.save(nib.Nifti1Image(label, img.affine), str(lab_path))
        sources.append((path, lab_path, label))
    return sources


def make_cases(root: Path, sources, n_cases: int):
    """Both banks: full files (as synthesize writes them) and patches (as a `storage: patches` build cuts them)."""
    import nibabel as nib

    from ld_augment.io.atomic import atomic_save_nifti
    from ld_augment.io.nifti import sha256_file
    from ld_augment.pipeline.write_back import source_image_like
    from synthesis_bank import patch_store
    from synthesis_bank.manifest import file_record

    full, patches = root / "bank_full", root / "bank_patches"
    bases = patch_store.BaseLabels(patches)
    lines, shas = [], {}
    t_full = t_patch = 0.0
    for i in range(n_cases):
        s = i % len(sources)
        src_path, _, organ_label = sources[s]
        src_img = nib.load(str(src_path))
        raw = np.asarray(src_img.dataobj)
        rng = np.random.default_rng(i)
        coords = np.argwhere(organ_label > 0)
        centre = coords[rng.integers(len(coords))]
        radius = rng.uniform(2, 5, 3)
        lo = np.maximum(centre - 7, 0)
        hi = np.minimum(centre + 8, raw.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        g = np.indices(hi - lo).astype(np.float32) + lo[:, None, None, None]
        d = np.sqrt((((g - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0))
        lesion = d <= 1.0
        rim = (d > 1.0) & (d <= 1.0 + 1.0 / radius.min())
        change = rng.uniform(-70, -40)
        ct = raw.copy()
        ct[sl][lesion] = np.clip(ct[sl][lesion] + change + rng.normal(0, 5, int(lesion.sum())), -1024, 3071)
        ct[sl][rim] = np.clip(ct[sl][rim] + change / 2, -1024, 3071)
        label = organ_label.copy()
        label[sl][lesion & (organ_label[sl] > 0)] = 2   # the lesion's label lies in the organ (as engines draw it)
        case_id = f"ld_src_{s:02d}_v{i // len(sources):04d}"
        t = time.perf_counter()
        img_file = atomic_save_nifti(source_image_like(src_img, ct), full / "imagesTr" / f"{case_id}_0000.nii.gz")
        lab_img = nib.Nifti1Image(label, src_img.affine)
        lab_img.set_qform(src_img.affine, code=1)
        lab_img.set_sform(src_img.affine, code=1)
        lab_file = atomic_save_nifti(lab_img, full / "labelsTr" / f"{case_id}.nii.gz")
        t_full += time.perf_counter() - t
        t = time.perf_counter()
        sha = shas.setdefault(s, sha256_file(src_path))
        patch, base = patch_store.cut_patch(img_file, lab_file, src_path, sha, bases, [2], fill_value=1)
        target = patch_store.patch_path(patches, case_id)
        patch_store.save_patch(target, patch)
        t_patch += time.perf_counter() - t
        lines.append({"case_id": case_id, "source_id": f"src_{s:02d}", "source_file": str(src_path),
                      "source_sha256": sha, "seed": i, "status": "ok", "organ": None, "lesion_type": None,
                      "files": {"image": file_record(img_file), "label": file_record(lab_file)},
                      "storage": {"mode": "patches", "patch": f"patches/{case_id}.npz",
                                  "patch_sha256": sha256_file(target), "box": patch.box.tolist(),
                                  "base_label": base, "source": patch_store.source_reference(src_path, sha)}})
    for bank in (full, patches):
        (bank / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                       "numTraining": 0, "file_ending": ".nii.gz"}))
    (patches / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (full / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "storage"}) + "\n"
                                                 for x in lines))
    return full, patches, [x["case_id"] for x in lines], t_full, t_patch


def make_target(root: Path, patch) -> str:
    name = "Dataset900_StorageBench"
    plans = {
        "dataset_name": name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [112, 101, 122], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 400.0, "mean": 60.0, "median": 58.0, "min": -200.0, "percentile_00_5": -100.0,
            "percentile_99_5": 250.0, "std": 45.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": [112.0, 101.0, 122.0], "spacing": [3.0, 3.0, 3.0],
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []},
            "batch_dice": False}}}
    ds = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    for folder in (root / "nnUNet_raw" / name, root / "nnUNet_preprocessed" / name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(ds))
    (root / "nnUNet_preprocessed" / name / "nnUNetPlans.json").write_text(json.dumps(plans))
    return name


def full_copies_prepared(folder: Path, composed, ids, patch) -> float:
    """The baseline: every composed case saved as its own Blosc2 case (what preparing full copies writes)."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for cid in ids:
        data, seg, _, props = composed.load_case(cid)
        data = np.asarray(data).astype(np.float32)
        seg = np.asarray(seg).astype(np.int16)
        blocks, chunks = comp_blosc2_params(data.shape, tuple(patch), data.itemsize)
        blocks_s, chunks_s = comp_blosc2_params(seg.shape, tuple(patch), seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / cid), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_s, blocks_seg=blocks_s)
    return time.perf_counter() - t


def verify(root: Path, name: str, full_bank: Path, composed, ids) -> float:
    """Max |composed - nnU-Net's own preprocessing of the full case| over these cases (labels must agree)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = root / "nnUNet_preprocessed" / name
    pm = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    cm = pm.get_configuration("3d_fullres")
    ds = json.loads((pre / "dataset.json").read_text())
    worst = 0.0
    for cid in ids:
        ref_d, ref_s, _ = cm.preprocessor_class(verbose=False).run_case(
            [str(full_bank / "imagesTr" / f"{cid}_0000.nii.gz")], str(full_bank / "labelsTr" / f"{cid}.nii.gz"),
            pm, cm, ds)
        d, s, _, _ = composed.load_case(cid)
        worst = max(worst, float(np.abs(np.asarray(d) - ref_d).max()))
        if not np.array_equal(np.asarray(s), ref_s):
            raise SystemExit(f"verify: labels of {cid} differ from nnU-Net's full preprocessing")
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--batches", type=int, default=200, help="batches per loader (alternating)")
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--verify", type=int, default=3, help="cases re-checked against nnU-Net's full preprocessing")
    p.add_argument("--data", default=os.environ.get("LD_TEST_DATA", str(Path(__file__).resolve().parents[2] /
                                                                        "shared" / "data")))
    p.add_argument("--keep", default=None, help="keep the work folder here (default: a temporary folder)")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / CT).is_file():
        p.exit(2, f"error: {data / CT} not found (set --data or LD_TEST_DATA)\n")

    import torch
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_trainers.composed import ComposedBankDataset, PreparedPatchSource
    from synthesis_bank.patch_io import load_patch_record
    from synthesis_bank.prepare import prepare_bank

    torch.set_num_threads(1)
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_bank_storage_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[var] = str(root / var)
        t0 = time.perf_counter()
        sources = make_sources(root, data, args.sources)
        full_bank, patch_bank, ids, t_full, t_patch = make_cases(root, sources, args.cases)
        t_make = time.perf_counter() - t0
        name = make_target(root, args.patch)
        t = time.perf_counter()
        result = prepare_bank(patch_bank, name, num_processes=1, progress=False)
        t_prepare = time.perf_counter() - t
        folder = result.output_folder
        record = load_patch_record(folder, fix="prepare")
        composed = ComposedBankDataset(folder, PreparedPatchSource(folder, record["cases"]), ids)
        full_pre = root / "full_prepared"
        t_full_pre = full_copies_prepared(full_pre, composed, ids, args.patch)
        worst = verify(root, name, full_bank, composed, ids[:args.verify]) if args.verify else None

        raw_full = disk([full_bank / "imagesTr", full_bank / "labelsTr"])
        raw_patch = disk([patch_bank / "patches", patch_bank / "bases"])
        raw_patch_bases = len(list((patch_bank / "bases").glob("*.npz")))
        src_disk = disk([s[0] for s in sources])
        pre_full = disk([full_pre])
        pre_patch = disk([folder / "sources", folder / "patches"])

        lm = LabelManager(LABELS, regions_class_order=None)
        full_ds = nnUNetDatasetBlosc2(str(full_pre), ids)
        composed.identifiers = np.asarray(ids)
        full_ds.identifiers = np.asarray(ids)
        kw = dict(oversample_foreground_percent=0.33, transforms=None)
        loaders = {"full": nnUNetDataLoader(full_ds, args.batch_size, args.patch, args.patch, lm, **kw),
                   "patches": nnUNetDataLoader(composed, args.batch_size, args.patch, args.patch, lm, **kw)}
        for loader in loaders.values():
            next(loader)
        times = {"full": [], "patches": []}
        np.random.seed(0)
        for i in range(args.batches):
            order = ("full", "patches") if i % 2 == 0 else ("patches", "full")
            for k in order:
                t = time.perf_counter()
                next(loaders[k])
                times[k].append(time.perf_counter() - t)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    mb = 1e6
    print(f"device: {device_name()} | {args.cases} cases from {args.sources} sources, "
          f"{tuple(np.asarray(sources[0][2].shape))} voxels at 3 mm (int16), patch {tuple(args.patch)}, "
          f"batch {args.batch_size}")
    print(f"fabricate: {t_make:.1f} s (writing full copies {t_full:.1f} s, cutting patches {t_patch:.1f} s); "
          f"prepare patches {t_prepare:.1f} s ({len(result.prepared)} cases, methods "
          f"{sorted({c['method'] for c in record['cases'].values()})}); full-copy baseline save {t_full_pre:.1f} s")
    if worst is not None:
        print(f"verify: composed vs nnU-Net's full preprocessing on {args.verify} case(s): max |diff| {worst:.3g}, "
              "labels identical")
    print(f"sources (shared by both, not counted): {src_disk[1] / mb:.1f} MB allocated")
    rows = [("raw bank (imagesTr+labelsTr | patches+bases)", raw_full, raw_patch),
            ("prepared (nnU-Net Blosc2 | sources+patches)", pre_full, pre_patch)]
    for label, f, pch in rows:
        print(f"{label:<48} full {f[1] / mb:9.1f} MB ({f[2]} files, {f[0] / mb:.1f} MB apparent)   "
              f"patches {pch[1] / mb:8.1f} MB ({pch[2]} files, {pch[0] / mb:.1f} MB apparent)   "
              f"ratio {100 * pch[1] / f[1]:.2f} % allocated ({100 * pch[0] / f[0]:.2f} % apparent)")
    print(f"raw disk target <= 15 %: {'PASS' if raw_patch[1] <= 0.15 * raw_full[1] else 'FAIL'}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    paired = float(np.median(np.array(times["patches"]) / np.array(times["full"])))
    for k in ("full", "patches"):
        print(f"{k:>8}: median {med[k] * 1e3:8.2f} ms/batch   mean {mean[k] * 1e3:8.2f} ms/batch "
              f"({len(times[k])} batches, nnU-Net loader, no augmentation)")
    over = 100 * (med["patches"] / med["full"] - 1)
    print(f"iteration time patches vs full copies: median {over:+.2f} %   mean "
          f"{100 * (mean['patches'] / mean['full'] - 1):+.2f} %   paired median {100 * (paired - 1):+.2f} %")
    print(f"target within 3 % (paired median: batches alternate, so each pair sees the same machine state): "
          f"{'PASS' if paired <= 1.03 else 'FAIL'}")
    print(f"base labels: {raw_patch_bases} for {args.sources} sources; prepared sources: {len(record['sources'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
