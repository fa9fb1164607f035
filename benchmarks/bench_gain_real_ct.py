"""The gain benchmark's small-data mode on the shared REAL CT: a 3-case liver dataset, a bank, the exact command.

    PYTHONPATH=. python benchmarks/bench_gain_real_ct.py --work /tmp/gain_ct [--ct PATH --seg PATH]

1. three 56 x 56 x 30 crops (3 mm) of the real abdominal CT around the liver, each given 1-2 liver lesions by
   `synthesis-bank build` (procedural engine) -> nnU-Net raw `Dataset611_GainCT` {background, liver, cancer};
2. a training bank built from that dataset's own cases (existing lesions kept, one more added);
3. `python scripts/benchmark_gain.py --dataset 611 --bank BANK --ratios 0.5 --folds loo --seeds 2 --quick
   --out OUT` (the issue's invocation), timed; prints results.md.
Needs only CPUs; about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CROPS = [(40, 24, 0), (48, 22, 0), (52, 30, 0)]
SIZE = (56, 56, 30)


def _crop(ct_img, seg, lo):
    sl = tuple(slice(a, a + s) for a, s in zip(lo, SIZE))
    affine = ct_img.affine.copy()
    affine[:3, 3] = ct_img.affine[:3, :3] @ np.array(lo) + ct_img.affine[:3, 3]
    return np.asarray(ct_img.dataobj)[sl].astype(np.int16), seg[sl].astype(np.uint8), affine


def _build(recipe: dict, bank: Path) -> None:
    from synthesis_bank.builder import build_bank
    from synthesis_bank.recipe import Recipe

    summary = build_bank(Recipe.from_dict(recipe, origin="bench recipe"), bank, progress=False)
    if not summary.ok:
        raise SystemExit(summary.format_table())


def fabricate(work: Path, ct: Path, seg_file: Path) -> tuple[Path, Path]:
    ct_img, seg = nib.load(str(ct)), np.asarray(nib.load(str(seg_file)).dataobj)
    for i, lo in enumerate(CROPS):
        arr, organs, affine = _crop(ct_img, seg, lo)
        for a, folder in ((arr, "crops"), (organs, "segs")):
            (work / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(a, affine), str(work / folder / f"ct{i}.nii.gz"))
    lesioned = work / "lesioned"
    _build({"sources": {"folder": str(work / "crops"), "segmentations": str(work / "segs")}, "organs": ["liver"],
            "lesion_types": {"metastasis": 1.0}, "lesions_per_case": [1, 2], "spacing": [3.0, 3.0, 3.0],
            "segmentation": "error", "seed": 11, "dataset_name": "Lesioned"}, lesioned)
    root = work / "nnUNet_raw" / "Dataset611_GainCT"
    entries = [json.loads(x) for x in (lesioned / "manifest.jsonl").read_text().splitlines() if x.strip()]
    for k, e in enumerate(sorted((e for e in entries if e["status"] == "ok"), key=lambda e: e["case_id"])):
        for sub, name in (("imagesTr", f"liver_{k:03d}_0000.nii.gz"), ("labelsTr", f"liver_{k:03d}.nii.gz")):
            src = lesioned / sub / (f"{e['case_id']}_0000.nii.gz" if sub == "imagesTr" else f"{e['case_id']}.nii.gz")
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / name).write_bytes(src.read_bytes())
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "numTraining": len(CROPS),
                                                   "labels": {"background": 0, "liver": 1, "cancer": 2},
                                                   "file_ending": ".nii.gz"}))
    bank = work / "bank"
    _build({"sources": {"nnunet_raw": str(root)}, "organs": ["liver"], "lesion_types": {"metastasis": 1.0},
            "variants_per_source": 2, "spacing": [3.0, 3.0, 3.0], "segmentation": "error", "seed": 12,
            "dataset_name": "GainCTBank"}, bank)
    return root, bank


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LD_TEST_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--work", required=True)
    p.add_argument("--ct", default=str(data / "ct" / "abdomen_ct_3mm_crop.nii.gz"))
    p.add_argument("--seg", default=str(data / "ct" / "abdomen_ct_3mm_crop_totalseg_v2.nii.gz"))
    args = p.parse_args()
    work = Path(args.work).resolve()
    t0 = time.perf_counter()
    _, bank = fabricate(work, Path(args.ct), Path(args.seg))
    t_fab = time.perf_counter() - t0
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_def_n_proc="1", nnUNet_compile="f",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_gain.py"), "--dataset", "611", "--bank", str(bank),
           "--ratios", "0.5", "--folds", "loo", "--seeds", "2", "--quick", "--out", str(work / "OUT")]
    print("$", " ".join(cmd), flush=True)
    t1 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL if False else None)
    print(f"fabrication (2 bank builds) {t_fab:.0f} s; benchmark_gain.py end to end {time.perf_counter() - t1:.0f} s "
          f"on {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
