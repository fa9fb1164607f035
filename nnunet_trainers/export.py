"""`ld-augment nnunet export`: a model trained with the bank trainer, as the stock `nnUNetTrainer` model.

The bank trainer changes what a network is trained on, never the network: its checkpoints differ from stock
ones only in `trainer_name`, which nnU-Net's predictor looks up as a class. Rewriting that name (and naming the
folder `nnUNetTrainer__PLANS__CONFIG`) lets plain nnU-Net (`nnUNetv2_predict`, `nnUNetv2_ensemble`,
`nnUNetv2_find_best_configuration`) use the model where ld-augment is not installed. Before writing, the
checkpoint's weights are loaded strictly into the network stock nnU-Net builds from the exported plans, so a
model whose architecture a trainer variant changed is refused instead of shipped broken. The bank records of the
folds (`lesiondiffusion_bank.json`) move into one side file, `ld_augment_provenance.json`.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ld_augment.errors import CheckpointError, ConfigError, InputError
from ld_augment.io.atomic import atomic_write_json
from ld_augment.io.nifti import sha256_file

STOCK_TRAINER = "nnUNetTrainer"
PROVENANCE_FILE = "ld_augment_provenance.json"
PROVENANCE_FORMAT = "ld-augment-export/1"
BANK_RECORD = "lesiondiffusion_bank.json"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
MODEL_FILES = ("plans.json", "dataset.json")


@dataclass(frozen=True)
class ExportResult:
    source: Path
    destination: Path
    folds: list[str]
    checkpoints: list[str]


def find_dataset_folder(results_root: Path, dataset: str | int) -> Path:
    """`3`, `Dataset003_Liver` -> results_root/Dataset003_Liver (exactly one match or a clear error)."""
    text = str(dataset)
    if text.startswith("Dataset"):
        hits = [results_root / text] if (results_root / text).is_dir() else []
    elif text.isdigit():
        hits = sorted(results_root.glob(f"Dataset{int(text):03d}_*"))
    else:
        raise ConfigError(f"-d {text!r}: give a dataset id (3) or name (Dataset003_Liver)")
    if len(hits) != 1:
        raise ConfigError(f"-d {text}: found {[h.name for h in hits]} in {results_root}; expected exactly one "
                          f"trained dataset folder")
    return hits[0]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """nnU-Net's checkpoint dict. weights_only=False as nnU-Net's own predictor does (the checkpoint holds a
    torch.device and plain Python objects); only files of the user's own results folder are read."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an nnU-Net v2 checkpoint (missing {missing})")
    return ckpt


def _trainer_class(name: str):
    """The trainer class by name: ours first (incl. generated run-identity variants), then nnU-Net's lookup."""
    try:
        from nnunet_trainers import trainer as ours

        return getattr(ours, name)
    except (AttributeError, ImportError):
        pass
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        return recursive_find_trainer_class_by_name(name)
    except Exception:  # noqa: BLE001 - unknown here: the strict weight check below still applies
        return None


def check_stock_network(ckpt: dict[str, Any], plans: dict, dataset_json: dict, *, file: Path) -> None:
    """Refuse unless the checkpoint's weights are exactly those of the network stock nnU-Net builds."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = ckpt["trainer_name"]
    cls = _trainer_class(name)
    if cls is not None and cls.build_network_architecture is not nnUNetTrainer.build_network_architecture:
        raise ConfigError(f"{file}: trainer {name} builds its own network (build_network_architecture is "
                          f"overridden), so plain nnUNetTrainer cannot load this model; export only models whose "
                          f"trainer keeps nnU-Net's architecture")
    pm = PlansManager(plans)
    configuration = ckpt["init_args"].get("configuration")
    if configuration not in pm.available_configurations:
        raise InputError(f"{file}: configuration {configuration!r} is not in the model's plans.json "
                         f"({pm.available_configurations})")
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    network = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    try:
        network.load_state_dict(ckpt["network_weights"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ConfigError(f"{file}: the weights do not fit the network stock nnU-Net builds from plans.json "
                          f"({' '.join(first)}); trainer {name} changed the architecture, so the model cannot "
                          f"be exported as {STOCK_TRAINER}") from None


def _rewrite_checkpoint(src: Path, dst: Path, plans: dict, dataset_json: dict) -> dict[str, Any]:
    import torch

    ckpt = load_checkpoint(src)
    check_stock_network(ckpt, plans, dataset_json, file=src)
    original = ckpt["trainer_name"]
    ckpt["trainer_name"] = STOCK_TRAINER
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ckpt, str(tmp))
    os.replace(tmp, dst)
    return {"trainer_name": original, "sha256": sha256_file(src), "exported_sha256": sha256_file(dst)}


def export_model(dataset: str | int, configuration: str, trainer: str, out_root: str | os.PathLike, *,
                 plans_identifier: str = "nnUNetPlans", results_root: str | os.PathLike | None = None,
                 folds: Sequence[str] | None = None) -> ExportResult:
    """Copy `<results>/<Dataset>/<trainer>__<plans>__<configuration>` to
    `<out_root>/<Dataset>/nnUNetTrainer__<plans>__<configuration>` with every checkpoint's trainer_name stock.

    Written into a hidden sibling folder first and moved into place at the end: an interrupted export leaves no
    half model. Refuses an existing destination, a model without checkpoints and a changed architecture.
    """
    if results_root is None:
        results_root = os.environ.get("nnUNet_results")
        if not results_root:
            raise ConfigError("nnUNet_results is not set: export needs the trained model's results root "
                              "(export nnUNet_results=... as for nnUNetv2_predict, or pass --results)")
    results = Path(results_root).expanduser().resolve()
    dataset_dir = find_dataset_folder(results, dataset)
    src = dataset_dir / f"{trainer}__{plans_identifier}__{configuration}"
    if not src.is_dir():
        have = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
        raise ConfigError(f"{src}: no such trained model; {dataset_dir} holds {have}")
    for name in MODEL_FILES:
        if not (src / name).is_file():
            raise InputError(f"{src / name}: missing; is {src} a complete nnU-Net model folder?")
    import json

    plans = json.loads((src / "plans.json").read_text())
    dataset_json = json.loads((src / "dataset.json").read_text())
    fold_dirs = sorted(p for p in src.glob("fold_*") if p.is_dir())
    if folds:
        wanted = {f"fold_{f}" for f in folds}
        missing = sorted(wanted - {p.name for p in fold_dirs})
        if missing:
            raise ConfigError(f"{src}: no {missing}; it has {[p.name for p in fold_dirs]}")
        fold_dirs = [p for p in fold_dirs if p.name in wanted]
    if not any((p / c).is_file() for p in fold_dirs for c in CHECKPOINTS):
        raise InputError(f"{src}: no fold folder holds a checkpoint ({', '.join(CHECKPOINTS)}); train first")

    out = Path(out_root).expanduser().resolve()
    if out == results:
        raise ConfigError(f"-o {out} is the results root the model comes from; export into another root so the "
                          f"original run stays untouched")
    dest = out / dataset_dir.name / f"{STOCK_TRAINER}__{plans_identifier}__{configuration}"
    if dest.exists():
        raise ConfigError(f"{dest} already exists; remove it or export into another folder")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    provenance: dict[str, Any] = {
        "format": PROVENANCE_FORMAT, "exported_from": str(src), "trainer": trainer,
        "plans_identifier": plans_identifier, "configuration": configuration,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "folds": {}}
    try:
        for item in src.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        written: list[str] = []
        for fold in fold_dirs:
            fold_out = tmp / fold.name
            shutil.copytree(fold, fold_out, ignore=shutil.ignore_patterns(*CHECKPOINTS, BANK_RECORD))
            entry: dict[str, Any] = {"checkpoints": {}}
            record = fold / BANK_RECORD
            if record.is_file():
                entry["bank"] = json.loads(record.read_text())
            for name in CHECKPOINTS:
                if (fold / name).is_file():
                    entry["checkpoints"][name] = _rewrite_checkpoint(fold / name, fold_out / name, plans,
                                                                     dataset_json)
                    written.append(f"{fold.name}/{name}")
            provenance["folds"][fold.name] = entry
        atomic_write_json(tmp / PROVENANCE_FILE, provenance)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(src, dest, [p.name for p in fold_dirs], written)
