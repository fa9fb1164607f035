#!/usr/bin/env python
"""Merge a synthesis bank into a COPY of an nnU-Net raw dataset, for users of stock nnU-Net trainers.

    python scripts/expand_dataset.py --dataset 3 --bank BANK --out-id 503 [--out-name LiverLD] [--folds 5]
        [--labels organ=liver] [--lesion-map cyst=masses] [--organ-maps TOTALSEG_DIR]

The new dataset `Dataset503_LiverLD` holds the real cases plus every finished bank case as extra training
cases. Its `splits_final.json` puts only real cases in validation (nnU-Net's own seeded 5-fold split of the
real cases) and adds to each fold's training list the bank cases whose source is not a validation case of
that fold (by id, file hash or near-duplicate content), so synthetic cases only ever train and nothing leaks.
Bank labels are written in the target's own labels (MSD `{liver, cancer}`, KiTS regions `{kidney, masses,
tumor}`) by the same rules as `synthesis-bank prepare` (`synthesis_bank.label_mapping`): a malignant lesion type
goes to the target's tumour label, anything else needs `--lesion-map`, and a case that does not label every
organ class of the target (KiTS `kidney` is both kidneys) takes them from `--organ-maps` or is left out (listed
in the summary with its reason). It is written where nnU-Net reads it,
`$nnUNet_preprocessed/<new dataset>/splits_final.json` (planning keeps it), and copied into the raw folder.
Then: `nnUNetv2_plan_and_preprocess -d 503 -c 3d_fullres` and train with any trainer. The bank's mixing
ratio is then fixed by case counts; use nnUNetTrainerLesionDiffusion for a set ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ld_augment.errors import ConfigError, InputError, LdAugmentError  # noqa: E402
from ld_augment.io.atomic import atomic_write_json  # noqa: E402
from ld_augment.io.dataset_json import read_dataset_json  # noqa: E402
from synthesis_bank.bank_folder import MARKER  # noqa: E402
from synthesis_bank.label_mapping import resolve_mapping  # noqa: E402
from synthesis_bank.nnunet_io import manifest_sha256, read_bank_cases, split_leaking  # noqa: E402
from synthesis_bank.prepare import case_label_plan, merge_label_args, write_target_label  # noqa: E402


def find_raw_dataset(dataset: str, raw_root: Path | None) -> Path:
    """A path, a name `DatasetXXX_Name` or an id, looked up in `raw_root` (default $nnUNet_raw)."""
    if Path(dataset).is_dir():
        return Path(dataset).resolve()
    root = raw_root or (Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else None)
    if root is None:
        raise ConfigError(f"dataset {dataset!r} is not a folder and nnUNet_raw is not set (or pass --raw-root)")
    if dataset.isdigit():
        hits = sorted(root.glob(f"Dataset{int(dataset):03d}_*"))
    else:
        hits = [root / dataset] if (root / dataset).is_dir() else []
    if len(hits) != 1:
        raise ConfigError(f"dataset {dataset!r}: found {[h.name for h in hits]} in {root}; expected exactly one")
    return hits[0]


def crossval_split(keys: list[str], n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """nnU-Net's own split (KFold, shuffled, seed 12345 by default) so folds match stock training."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(keys) < n_folds:
        raise ConfigError(f"{len(keys)} real training cases cannot make {n_folds} folds; lower --folds")
    return generate_crossval_split(sorted(keys), seed=seed, n_splits=n_folds)


def _leak_tables(source: Path, cases, ending: str, bank: Path) -> tuple[dict[str, str], dict]:
    """(sha256 of each real training image, {bank case: {real case: r}} near-duplicates by content)."""
    from ld_augment.io.nifti import sha256_file
    from synthesis_bank import near_duplicates as nd

    images = {p.name[: -len(f"_0000{ending}")]: p for p in sorted((source / "imagesTr").glob(f"*_0000{ending}"))}
    shas = {k: sha256_file(p) for k, p in images.items()}
    bank_files = {c.case_id: bank / "imagesTr" / f"{c.case_id}_0000{ending}" for c in cases}
    near = nd.near_duplicates(nd.fingerprints(bank_files), nd.fingerprints(images))
    return shas, near


def expand_dataset(source: Path, bank: Path, out_raw: Path, out_id: int, out_name: str, *,
                   preprocessed_root: Path | None, n_folds: int = 5, seed: int = 12345,
                   labels: Sequence[str] | None = None, lesion_map: Sequence[str] | None = None,
                   organ_maps: Path | None = None) -> dict:
    """Copy `source`, add the bank cases in its labels, write dataset.json and splits_final.json; returns a
    summary dict (with the bank cases left out and why)."""
    src_json = read_dataset_json(source / "dataset.json", expected="the source dataset")
    if not (bank / "dataset.json").is_file() and (bank / MARKER).is_file():
        raise InputError(f"{bank / 'dataset.json'}: not found; the bank {bank} has no finished case yet "
                         "(dataset.json appears with the first one): build or --resume it first")
    bank_json = read_dataset_json(bank / "dataset.json", expected="a bank folder (synthesis-bank build)")
    ending = src_json["file_ending"]
    if len(src_json["channel_names"]) != 1 or bank_json.get("file_ending", ".nii.gz") != ending:
        raise InputError(f"{source}: needs one channel and the bank's file ending "
                         f"({bank_json.get('file_ending')}); has {src_json['channel_names']} and {ending}")
    name = f"Dataset{out_id:03d}_{out_name}"
    dest = out_raw / name
    if dest.exists():
        raise ConfigError(f"{dest} already exists; choose another --out-id/--out-name or remove it")
    if organ_maps is not None and not organ_maps.is_dir():
        raise InputError(f"--organ-maps {organ_maps}: no such folder")
    real = sorted(p.name[: -len(ending)] for p in (source / "labelsTr").iterdir() if p.name.endswith(ending))
    cases = read_bank_cases(bank)
    clash = sorted(set(real) & {c.case_id for c in cases})
    if clash:
        raise InputError(f"bank case ids {clash[:3]} equal real case ids of {source}")
    mapping = resolve_mapping(bank_json.get("labels", {}), src_json["labels"],
                              [(c.extra.get("organ"), c.extra.get("lesion_type")) for c in cases],
                              merge_label_args(labels, lesion_map), bank_file=str(bank / "dataset.json"),
                              target_file=str(source / "dataset.json"))
    plans = {c.case_id: case_label_plan(c, mapping, organ_maps, ending) for c in cases}
    refused = {k: v for k, v in plans.items() if isinstance(v, str)}
    cases = [c for c in cases if c.case_id not in refused]
    if not cases:
        raise InputError(f"{bank / 'manifest.jsonl'}: every bank case was refused for {source.name}, e.g. "
                         f"{next(iter(refused.values()), 'the bank has no finished cases')}")
    tmp = out_raw / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            if (source / sub).is_dir():
                shutil.copytree(source / sub, tmp / sub)
        for c in cases:
            shutil.copy2(bank / "imagesTr" / f"{c.case_id}_0000{ending}",
                         tmp / "imagesTr" / f"{c.case_id}_0000{ending}")
            lut, fill = plans[c.case_id]
            write_target_label(bank / "labelsTr" / f"{c.case_id}{ending}", lut, fill,
                               tmp / "labelsTr" / f"{c.case_id}{ending}")
        shas, near = _leak_tables(source, cases, ending, bank)
        splits = []
        for fold in crossval_split(real, n_folds, seed):
            usable, _ = split_leaking(cases, fold["val"], [shas[k] for k in fold["val"] if k in shas], near)
            splits.append({"train": list(fold["train"]) + [c.case_id for c in usable], "val": list(fold["val"])})
        out_json = dict(src_json, numTraining=len(real) + len(cases), name=out_name,
                        ld_augment={"bank": str(bank), "manifest_sha256": manifest_sha256(bank),
                                    "source_dataset": source.name, "real_cases": len(real),
                                    "synthetic_cases": len(cases), "label_mapping": mapping.describe(),
                                    "refused": refused, "near_duplicates": near})
        atomic_write_json(tmp / "dataset.json", out_json)
        atomic_write_json(tmp / "splits_final.json", splits)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    splits_file = None
    if preprocessed_root is not None:
        splits_file = preprocessed_root / name / "splits_final.json"
        atomic_write_json(splits_file, splits)
    return {"dataset": name, "raw_folder": str(dest), "splits_file": str(splits_file) if splits_file else None,
            "real_cases": len(real), "synthetic_cases": len(cases), "folds": len(splits), "refused": refused}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="source raw dataset: id, DatasetXXX_Name or folder")
    p.add_argument("--bank", required=True, type=Path, help="bank folder (synthesis-bank build --out)")
    p.add_argument("--out-id", required=True, type=int, help="id of the new dataset")
    p.add_argument("--out-name", default=None, help="name of the new dataset (default: <source name>LD)")
    p.add_argument("--raw-root", type=Path, default=None, help="nnU-Net raw root (default $nnUNet_raw)")
    p.add_argument("--preprocessed-root", type=Path, default=None,
                   help="where splits_final.json goes (default $nnUNet_preprocessed; else only the raw copy)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--labels", nargs="+", default=None, metavar="BANK=TARGET",
                   help="as for synthesis-bank prepare: organ=liver, lesion=cancer, organ=drop")
    p.add_argument("--lesion-map", nargs="+", default=None, metavar="TYPE=TARGET",
                   help="where each bank lesion type goes: cyst=masses (benign types need it), or cyst=skip")
    p.add_argument("--organ-maps", type=Path, default=None, metavar="DIR",
                   help="TotalSegmentator segmentations of the bank's sources (<source id>.nii.gz) for target "
                        "classes a bank case does not label itself (e.g. the other kidney)")
    p.add_argument("--seed", type=int, default=12345, help="nnU-Net's split seed (keep 12345 to match stock folds)")
    args = p.parse_args(argv)
    try:
        source = find_raw_dataset(args.dataset, args.raw_root)
        raw_root = args.raw_root or source.parent
        pre = args.preprocessed_root or (Path(os.environ["nnUNet_preprocessed"])
                                         if os.environ.get("nnUNet_preprocessed") else None)
        out_name = args.out_name or source.name.split("_", 1)[1] + "LD"
        summary = expand_dataset(source, args.bank.resolve(), raw_root, args.out_id, out_name,
                                 preprocessed_root=pre, n_folds=args.folds, seed=args.seed, labels=args.labels,
                                 lesion_map=args.lesion_map,
                                 organ_maps=args.organ_maps.resolve() if args.organ_maps else None)
    except LdAugmentError as exc:
        p.exit(2, f"error: {exc}\n")
    print(json.dumps(summary, indent=2))
    if summary["splits_file"] is None:
        print(f"nnUNet_preprocessed not set: copy {summary['raw_folder']}/splits_final.json to "
              f"$nnUNet_preprocessed/{summary['dataset']}/ before training", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
