"""`synthesis-bank prepare`: preprocess a bank with a target dataset's nnU-Net plans.

The trainer mixes bank cases into the same batches as the target's own cases, so the bank must be
preprocessed exactly like them: same plans, configuration and data identifier, the target's intensity
normalization and reader, nnU-Net's own preprocessor class (`run_case_save`) and therefore its file format.
The result lives inside the bank (see `synthesis_bank.nnunet_io` for the layout), so one bank can be
prepared for several targets. nnU-Net is imported lazily: mounting the CLI must stay cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ld_augment.errors import ConfigError, InputError, LdAugmentError
from ld_augment.io.atomic import atomic_write_json
from ld_augment.io.nifti import sha256_file
from synthesis_bank.label_mapping import TargetLabels, parse_label_args, remap, resolve_mapping
from synthesis_bank.nnunet_io import (PREPARED_FORMAT, PREPARED_JSON, load_prepared, manifest_sha256,
                                      prepared_data_folder, prepared_root, preprocessing_sha256, read_bank_cases,
                                      record_key, sha256_json)
from synthesis_bank.patch_io import is_patch_bank


@dataclass(frozen=True)
class PrepareResult:
    target_dataset: str
    data_identifier: str
    output_folder: Path
    prepared: list[str]   # cases preprocessed by this call
    skipped: list[str]    # cases already prepared by an earlier call


def _label_values(value: Any) -> set[int]:
    if isinstance(value, (list, tuple)):
        return {int(v) for v in value}
    return {int(value)}


def check_label_compatibility(bank_labels: dict[str, Any], target_labels: dict[str, Any], *,
                              bank_file: str, target_file: str) -> None:
    """For copying bank label files unchanged (scripts/expand_dataset.py): bank label names must exist in the
    target with the same value. `prepare_bank` maps labels instead (`synthesis_bank.label_mapping`)."""
    problems = []
    for name, value in bank_labels.items():
        if name not in target_labels:
            problems.append(f"label {name!r}={value} is not a label of the target")
            continue
        bank_v, target_v = _label_values(value), _label_values(target_labels[name])
        if not bank_v <= target_v:
            problems.append(f"label {name!r} is {value} in the bank but {target_labels[name]} in the target")
    if problems:
        raise InputError(f"{bank_file}: labels do not match the target's {target_file}: " + "; ".join(problems)
                         + f". Target labels: {target_labels}. Copying label files needs identical labels; train "
                         f"with nnUNetTrainerLesionDiffusion instead, whose `synthesis-bank prepare` maps the bank's "
                         f"labels into the target's (by name, or --labels organ=... lesion=...)")


def _inputs_signature(files: Sequence[Path]) -> list[list[int]]:
    """(size, mtime) of a case's inputs: a rebuilt bank case is prepared again (cheap; no hashing of CTs)."""
    return [[f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _case_done(out_dir: Path, case_id: str, entry: dict | None, wanted: dict) -> bool:
    """Done when its files exist and the record says it was made from these inputs with these settings."""
    if entry != wanted or not (out_dir / f"{case_id}.pkl").is_file():
        return False
    return any((out_dir / f"{case_id}{ext}").is_file() for ext in (".b2nd", ".npz"))


def _prepare_one(job: tuple) -> tuple[str, list[int]]:
    """Worker: map the labels into the target's space, preprocess one case into its own staging folder, check
    labels, move it in (properties file last)."""
    case_id, image, label, lut, staging, out_dir, plans, configuration, dataset_json = job
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    stage = Path(staging) / case_id
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    if any(k != v for k, v in lut):
        label = _remapped_label(Path(label), dict(lut), stage / f"label_{case_id}{_ending(Path(label))}")
    preprocessor = cm.preprocessor_class(verbose=False)
    preprocessor.run_case_save(str(stage / case_id), [str(image)], str(label), pm, cm, dataset_json)
    values = _seg_values(stage, case_id)
    files = sorted((f for f in stage.iterdir() if f.name.startswith(case_id + ".") or
                    f.name.startswith(case_id + "_seg.")), key=lambda p: p.suffix == ".pkl")
    for f in files:
        os.replace(f, Path(out_dir) / f.name)
    shutil.rmtree(stage, ignore_errors=True)
    return case_id, values


def _ending(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _remapped_label(label: Path, lut: dict[int, int], out: Path) -> Path:
    """The bank label map in the target's label values, same grid and header (a staging copy; the bank's own
    file is never modified)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(label))
    mapped = remap(np.asarray(img.dataobj), lut, file=str(label))
    new = nib.Nifti1Image(mapped, img.affine, img.header)
    new.set_data_dtype(mapped.dtype)
    nib.save(new, str(out))
    return out


def _seg_values(stage: Path, case_id: str) -> list[int]:
    import numpy as np

    seg_b2nd = stage / f"{case_id}_seg.b2nd"
    if seg_b2nd.is_file():
        import blosc2

        seg = blosc2.open(urlpath=str(seg_b2nd), mode="r")[...]
    else:
        seg = np.load(stage / f"{case_id}.npz")["seg"]
    return [int(v) for v in np.unique(seg)]


def _resolve_target(target_dataset: str | int, plans_identifier: str, configuration: str):
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not nnUNet_preprocessed.is_set():
        raise ConfigError("nnUNet_preprocessed is not set: prepare needs the target dataset's plans "
                          "(export nnUNet_preprocessed=... as for nnUNetv2_train)")
    try:
        name = maybe_convert_to_dataset_name(target_dataset)
    except RuntimeError as exc:
        raise ConfigError(f"target dataset {target_dataset!r} not found: {exc}") from exc
    base = Path(nnUNet_preprocessed.get()) / name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise ConfigError(f"{plans_file} not found: plan the target first "
                          f"(nnUNetv2_plan_and_preprocess -d {target_dataset} -c {configuration})")
    plans = json.loads(plans_file.read_text())
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise ConfigError(f"configuration {configuration!r} is not in {plans_file}; "
                          f"choose one of {pm.available_configurations}")
    dataset_json = json.loads((base / "dataset.json").read_text())
    return name, plans, pm, dataset_json


def _check_channels(target_json: dict, bank_json: dict, *, target_file: str, bank_file: str) -> None:
    """A CT bank trains only single-channel CT targets: nnU-Net normalizes by channel name."""
    channels = target_json.get("channel_names", target_json.get("modality", {}))
    names = [str(v) for v in channels.values()]
    if len(names) != 1 or names[0].strip().upper() != "CT":
        raise InputError(f"{target_file}: channel_names {channels} — a CT bank ({bank_file}) can only train a "
                         f"target with one channel named CT (nnU-Net's CT normalization)")
    bank_channels = bank_json.get("channel_names", {"0": "CT"})
    if len(bank_channels) != 1:
        raise InputError(f"{bank_file}: the bank has channel_names {bank_channels}, a CT bank has one channel")


def _hash_target_images(name: str, ending: str, cached: dict, progress: bool) -> dict[str, dict]:
    """sha256 of the target's raw imagesTr/imagesTs (channel 0), reusing hashes of unchanged files.

    The leakage guard compares bank sources to these by content; {} when nnUNet_raw does not hold the target.
    """
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        return {}
    root = Path(nnUNet_raw.get()) / name
    out: dict[str, dict] = {}
    for folder in ("imagesTr", "imagesTs"):
        files = sorted((root / folder).glob(f"*_0000{ending}")) if (root / folder).is_dir() else []
        table: dict[str, dict] = {}
        old = cached.get(folder, {})
        for f in _bar(files, f"hash {folder}", progress):
            case_id = f.name[: -len(f"_0000{ending}")]
            st = f.stat()
            prev = old.get(case_id)
            if prev and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
                table[case_id] = prev
            else:
                table[case_id] = {"sha256": sha256_file(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        out[folder] = table
    return out


def _bar(items, desc: str, progress: bool, total: int | None = None):
    """A per-case progress bar over `items` (a sequence, or an iterator with its `total`); none for 0-1 cases."""
    total = len(items) if total is None else total
    if not progress or total < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="case", dynamic_ncols=True)


def _test_sources(cases, target_images: dict) -> list[str]:
    """Bank cases made from one of the target's test images (imagesTs), by verbatim id or by content."""
    test = target_images.get("imagesTs", {})
    shas = {v["sha256"] for v in test.values()}
    return [c.case_id for c in cases if c.source_id in test or (c.source_sha256 and c.source_sha256 in shas)]


def _disk_estimate(jobs: list[tuple], spacing: Sequence[float], transpose: Sequence[int]) -> int:
    """Upper bound of the bytes the jobs write: float32 data + int16 seg per voxel at the target spacing
    (blosc2 usually compresses this to well under half)."""
    import nibabel as nib

    total = 0
    for job in jobs:
        img = nib.load(str(job[1]))
        zooms = img.header.get_zooms()[:3]
        # nnU-Net's SimpleITK reader returns axes reversed (z, y, x) before transpose_forward
        shape_zyx = list(img.shape[:3])[::-1]
        spacing_zyx = list(zooms)[::-1]
        shape_t = [shape_zyx[i] for i in transpose]
        spacing_t = [spacing_zyx[i] for i in transpose]
        sp = list(spacing) if len(spacing) == 3 else [spacing_t[0], *spacing]
        voxels = 1
        for n, s_old, s_new in zip(shape_t, spacing_t, sp):
            voxels *= max(1, round(n * s_old / s_new))
        total += voxels * 6
    return total


def prepare_bank(bank_dir: str | os.PathLike, target_dataset: str | int, *, configuration: str = "3d_fullres",
                 plans_identifier: str = "nnUNetPlans", num_processes: int | None = None,
                 labels: Sequence[str] | dict[str, str] | None = None, allow_test_sources: bool = False,
                 progress: bool = True) -> PrepareResult:
    """Preprocess every finished bank case with the target's plans, its labels mapped into the target's labels.

    A case is prepared again when its inputs, the label mapping or the plans fields that affect preprocessing
    changed (re-planning with another spacing re-prepares; a new batch size does not). Writes
    `<bank>/nnUNet_preprocessed/<DatasetName>/<data_identifier>/` and `prepared.json` beside it (see
    `synthesis_bank.nnunet_io`), which the trainer checks. Bank cases made from the target's test images are
    refused unless `allow_test_sources`.
    """
    bank = Path(bank_dir).resolve()
    bank_json_file = bank / "dataset.json"
    if not bank_json_file.is_file():
        raise InputError(f"{bank_json_file}: not found; {bank} is not a bank folder (synthesis-bank build)")
    bank_json = json.loads(bank_json_file.read_text())
    name, plans, pm, target_json = _resolve_target(target_dataset, plans_identifier, configuration)
    target_file = f"{name}/dataset.json"
    cm = pm.get_configuration(configuration)
    _check_channels(target_json, bank_json, target_file=target_file, bank_file=str(bank_json_file))
    ending = bank_json.get("file_ending", ".nii.gz")
    reader = pm.image_reader_writer_class
    if ending not in getattr(reader, "supported_file_endings", [ending]):
        raise InputError(f"the target's reader {reader.__name__} cannot read the bank's {ending} files")

    manifest_hash = manifest_sha256(bank)
    cases = read_bank_cases(bank)
    explicit = labels if isinstance(labels, dict) else parse_label_args(labels)
    mapping = resolve_mapping(bank_json.get("labels", {}), target_json["labels"],
                              [(c.extra.get("organ"), c.extra.get("lesion_type")) for c in cases], explicit,
                              bank_file=str(bank_json_file), target_file=target_file)
    doc = load_prepared(bank, name) or {"format": PREPARED_FORMAT, "target_dataset": name, "records": {},
                                        "data": {}, "target_images": {}}
    target_images = _hash_target_images(name, target_json.get("file_ending", ".nii.gz"),
                                        doc.get("target_images", {}), progress)
    doc["target_images"] = target_images
    from_test = _test_sources(cases, target_images)
    if from_test and not allow_test_sources:
        raise InputError(f"{bank / 'manifest.jsonl'}: {len(from_test)} bank case(s) were made from {name}'s test "
                         f"images (imagesTs), e.g. {from_test[:3]}; training on them leaks the test set. Rebuild "
                         f"the bank without them, or pass --allow-test-sources to prepare them anyway")

    prep_sha = preprocessing_sha256(plans, cm.configuration, target_json)
    if is_patch_bank(cases):   # sources once + preprocessed patches, under nnUNet_preprocessed (prepare_patches)
        from nnunetv2.paths import nnUNet_preprocessed
        from synthesis_bank.prepare_patches import prepare_patch_cases

        folder, done, skipped = prepare_patch_cases(
            bank, cases, name=name, plans=plans, configuration=configuration, dataset_json=target_json,
            mapping=mapping, preprocessed_root=Path(nnUNet_preprocessed.get()), prep_sha=prep_sha,
            manifest_hash=manifest_hash, progress=progress,
            extra={"plans_identifier": plans_identifier, "target_images": target_images,
                   "test_sources_allowed": from_test, "nnunetv2_version": _nnunet_version()},
            allowed=TargetLabels(target_json["labels"]).written_values() | {0})
        return PrepareResult(name, cm.data_identifier, folder, done, skipped)
    out_dir = prepared_data_folder(bank, name, cm.data_identifier)
    staging = prepared_root(bank, name) / f".staging_{cm.data_identifier}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = doc["data"].setdefault(cm.data_identifier, {})
    jobs, skipped, wanted = [], [], {}
    for case in cases:
        image = bank / "imagesTr" / f"{case.case_id}_0000{ending}"
        label = bank / "labelsTr" / f"{case.case_id}{ending}"
        for f in (image, label):
            if not f.is_file():
                raise InputError(f"{f}: missing, but {bank / 'manifest.jsonl'} lists case {case.case_id} as ok")
        lut = sorted(mapping.lut_for(case.extra.get("organ"), case.extra.get("lesion_type")).items())
        wanted[case.case_id] = {"preprocessing_sha256": prep_sha, "label_map": [list(p) for p in lut],
                                "inputs": _inputs_signature((image, label))}
        if _case_done(out_dir, case.case_id, table.get(case.case_id), wanted[case.case_id]):
            skipped.append(case.case_id)
        else:
            jobs.append((case.case_id, image, label, lut, str(staging), str(out_dir), plans, configuration,
                         target_json))
    if jobs:
        estimate = _disk_estimate(jobs, cm.spacing, pm.transpose_forward)
        free = shutil.disk_usage(out_dir).free
        print(f"prepare: {len(jobs)} case(s) to preprocess for {name} {configuration}, up to "
              f"{estimate / 1e9:.2f} GB uncompressed ({free / 1e9:.1f} GB free in {out_dir})", flush=True)

    for job in jobs:   # their files are about to be replaced: no record may vouch for them meanwhile
        table.pop(job[0], None)
    _write_doc(bank, name, doc)
    allowed = TargetLabels(target_json["labels"]).written_values() | {0, -1}
    done: list[str] = []
    last_write = time.monotonic()
    for case_id, values in _bar(_run_jobs(jobs, num_processes), "prepare", progress, total=len(jobs)):
        bad = sorted(set(values) - allowed)
        if bad:
            for f in [*out_dir.glob(f"{case_id}.*"), *out_dir.glob(f"{case_id}_seg.*")]:
                f.unlink()
            _write_doc(bank, name, doc)
            raise InputError(f"{bank / 'labelsTr' / (case_id + ending)}: label values {bad} are not labels of "
                             f"{name} ({target_json['labels']})")
        table[case_id] = wanted[case_id]
        done.append(case_id)
        if time.monotonic() - last_write > 10:      # an interrupted prepare keeps what it finished
            _write_doc(bank, name, doc)
            last_write = time.monotonic()
    shutil.rmtree(staging, ignore_errors=True)
    doc["records"][record_key(plans_identifier, configuration)] = {
        "configuration": configuration,
        "plans_identifier": plans_identifier,
        "data_identifier": cm.data_identifier,
        "preprocessing_sha256": prep_sha,
        "plans_sha256": sha256_json(plans),
        "manifest_sha256": manifest_hash,
        "label_mapping": mapping.describe(),
        "cases": [c.case_id for c in cases],
        "data_sha256": sha256_json({c.case_id: wanted[c.case_id] for c in cases}),
        "test_sources_allowed": from_test,
        "nnunetv2_version": _nnunet_version(),
    }
    _write_doc(bank, name, doc)
    return PrepareResult(name, cm.data_identifier, out_dir, done, skipped)


def _run_jobs(jobs: list[tuple], num_processes: int | None):
    if num_processes is None:
        num_processes = int(os.environ.get("nnUNet_def_n_proc", "4"))
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _prepare_one(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        yield from pool.imap_unordered(_prepare_one, jobs)


def _nnunet_version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


def _write_doc(bank: Path, name: str, doc: dict) -> None:
    atomic_write_json(prepared_root(bank, name) / PREPARED_JSON, doc)


# --- CLI: mounted by synthesis_bank.cli as `synthesis-bank prepare` -------------------------------------------

def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `prepare` to a subparsers object; the parsed namespace's `func(args)` runs it and returns 0."""
    p = subparsers.add_parser("prepare", help="preprocess a bank with a target dataset's nnU-Net plans",
                              description=prepare_bank.__doc__)
    _add_arguments(p)
    p.set_defaults(func=run_prepare_args)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank", required=True, help="bank folder (synthesis-bank build --out)")
    p.add_argument("--target", required=True, help="target nnU-Net dataset id or name (e.g. 3 or Dataset003_Liver)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", dest="plans_identifier", default="nnUNetPlans")
    p.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=None)
    p.add_argument("--labels", nargs="+", default=None, metavar="BANK=TARGET",
                   help="map bank labels to the target's where names do not say it: organ=liver lesion=cancer, "
                        "organ=drop, or per lesion type \"renal cell carcinoma=tumor\" (default: by name)")
    p.add_argument("--allow-test-sources", action="store_true",
                   help="prepare bank cases made from the target's imagesTs anyway (recorded)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_prepare_args(args: argparse.Namespace) -> int:
    result = prepare_bank(args.bank, args.target, configuration=args.configuration,
                          plans_identifier=args.plans_identifier, num_processes=args.num_processes,
                          labels=getattr(args, "labels", None),
                          allow_test_sources=getattr(args, "allow_test_sources", False),
                          progress=getattr(args, "progress", True))
    print(f"prepared {len(result.prepared)} case(s), skipped {len(result.skipped)} already prepared -> "
          f"{result.output_folder} (target {result.target_dataset}, {result.data_identifier})")
    return 0


def main_prepare(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: `python -m synthesis_bank.prepare --bank DIR --target DATASET`."""
    parser = argparse.ArgumentParser(prog="synthesis-bank prepare", description=prepare_bank.__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_prepare_args(args)
    except LdAugmentError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main_prepare())
