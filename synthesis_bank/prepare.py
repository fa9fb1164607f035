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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ld_augment.errors import ConfigError, InputError, LdAugmentError
from ld_augment.io.atomic import atomic_write_json
from synthesis_bank.nnunet_io import (PREPARED_FORMAT, PREPARED_JSON, manifest_sha256, prepared_data_folder,
                                      prepared_root, read_bank_cases, sha256_json)


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
    """Bank label names must exist in the target with the same value, or the trainer would teach wrong classes."""
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
                         + f". Target labels: {target_labels}. Rebuild the bank with the target's label scheme.")


def _case_done(out_dir: Path, case_id: str, inputs: Sequence[Path]) -> bool:
    """A case is done when its properties file (moved last) exists and is newer than its inputs."""
    pkl = out_dir / f"{case_id}.pkl"
    if not pkl.is_file():
        return False
    if not any((out_dir / f"{case_id}{ext}").is_file() for ext in (".b2nd", ".npz")):
        return False
    mtime = pkl.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns <= mtime for p in inputs)


def _prepare_one(job: tuple) -> tuple[str, list[int]]:
    """Worker: preprocess one case into its own staging folder, check labels, move it in (properties last)."""
    case_id, image, label, staging, out_dir, plans, configuration, dataset_json = job
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    stage = Path(staging) / case_id
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    preprocessor = cm.preprocessor_class(verbose=False)
    preprocessor.run_case_save(str(stage / case_id), [str(image)], str(label), pm, cm, dataset_json)
    values = _seg_values(stage, case_id)
    files = sorted(stage.iterdir(), key=lambda p: p.suffix == ".pkl")
    for f in files:
        os.replace(f, Path(out_dir) / f.name)
    shutil.rmtree(stage, ignore_errors=True)
    return case_id, values


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


def prepare_bank(bank_dir: str | os.PathLike, target_dataset: str | int, *, configuration: str = "3d_fullres",
                 plans_identifier: str = "nnUNetPlans", num_processes: int | None = None) -> PrepareResult:
    """Preprocess every finished bank case with the target's plans; cases prepared before are skipped.

    Writes `<bank>/nnUNet_preprocessed/<DatasetName>/<data_identifier>/` and records the target, plans hash
    and manifest hash in `<bank>/nnUNet_preprocessed/<DatasetName>/prepared.json`, which the trainer checks.
    """
    bank = Path(bank_dir).resolve()
    bank_json_file = bank / "dataset.json"
    if not bank_json_file.is_file():
        raise InputError(f"{bank_json_file}: not found; {bank} is not a bank folder (synthesis-bank build)")
    bank_json = json.loads(bank_json_file.read_text())
    name, plans, pm, target_json = _resolve_target(target_dataset, plans_identifier, configuration)
    cm = pm.get_configuration(configuration)
    check_label_compatibility(bank_json.get("labels", {}), target_json["labels"],
                              bank_file=str(bank_json_file), target_file=f"{name}/dataset.json")
    n_channels = len(target_json.get("channel_names", target_json.get("modality", {})))
    if n_channels != len(bank_json.get("channel_names", {"0": "CT"})):
        raise InputError(f"{bank_json_file}: the bank has {len(bank_json.get('channel_names', {}))} channel(s), "
                         f"target {name} has {n_channels}; a CT bank can only train single-channel CT targets")
    ending = bank_json.get("file_ending", ".nii.gz")
    reader = pm.image_reader_writer_class
    if ending not in getattr(reader, "supported_file_endings", [ending]):
        raise InputError(f"the target's reader {reader.__name__} cannot read the bank's {ending} files")

    manifest_hash = manifest_sha256(bank)
    cases = read_bank_cases(bank)
    out_dir = prepared_data_folder(bank, name, cm.data_identifier)
    staging = prepared_root(bank, name) / f".staging_{cm.data_identifier}"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, skipped = [], []
    for case in cases:
        image = bank / "imagesTr" / f"{case.case_id}_0000{ending}"
        label = bank / "labelsTr" / f"{case.case_id}{ending}"
        for f in (image, label):
            if not f.is_file():
                raise InputError(f"{f}: missing, but {bank / 'manifest.jsonl'} lists case {case.case_id} as ok")
        if _case_done(out_dir, case.case_id, (image, label)):
            skipped.append(case.case_id)
        else:
            jobs.append((case.case_id, image, label, str(staging), str(out_dir), plans, configuration, target_json))

    allowed = set().union(*(_label_values(v) for v in target_json["labels"].values())) | {-1}
    done: list[str] = []
    for case_id, values in _run_jobs(jobs, num_processes):
        bad = sorted(set(values) - allowed)
        if bad:
            for f in out_dir.glob(f"{case_id}.*"):
                f.unlink()
            raise InputError(f"{bank / 'labelsTr' / (case_id + ending)}: label values {bad} are not labels of "
                             f"{name} ({target_json['labels']})")
        done.append(case_id)
    shutil.rmtree(staging, ignore_errors=True)
    _write_record(bank, name, cm.data_identifier, {
        "configuration": configuration,
        "plans_identifier": plans_identifier,
        "plans_sha256": sha256_json(plans),
        "manifest_sha256": manifest_hash,
        "cases": [c.case_id for c in cases],
        "nnunetv2_version": _nnunet_version(),
    })
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


def _write_record(bank: Path, name: str, data_identifier: str, record: dict) -> None:
    path = prepared_root(bank, name) / PREPARED_JSON
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if doc.get("format") != PREPARED_FORMAT:
        doc = {"format": PREPARED_FORMAT, "target_dataset": name, "configurations": {}}
    doc["configurations"][data_identifier] = record
    atomic_write_json(path, doc)


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


def run_prepare_args(args: argparse.Namespace) -> int:
    result = prepare_bank(args.bank, args.target, configuration=args.configuration,
                          plans_identifier=args.plans_identifier, num_processes=args.num_processes)
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
