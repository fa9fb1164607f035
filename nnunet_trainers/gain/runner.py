"""Running the protocol with nnU-Net: preflight (labels, plans, bank, splits) and one job (train, predict, evaluate).

The preflight does every check that can fail before anything trains: the lesion label against dataset.json,
the evaluation label files' values, the test set against the bank's sources, the plans (written when absent;
`quick` writes `nnUNetPlansQuick`: nnU-Net's planner at a coarse target spacing, then the network's feature
counts capped, so a CPU trains it in seconds) and the bank's preparation for those plans.

A job runs in its own process (nnU-Net reads its paths from the environment at import): `job_environment`
gives it nnUNet_results = OUT/models/<arm>/seed<k>, the bank settings, the seed, split file and schedule.
It trains with nnU-Net's `run_training`, predicts the evaluation cases with `nnUNetPredictor` (probabilities
kept for the FROC), evaluates them (`metrics.case_rows`) and writes OUT/jobs/<job>/rows.csv and run.json (times
and hardware).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ld_augment.errors import ConfigError, InputError
from nnunet_trainers.gain import labels as gl
from nnunet_trainers.gain.protocol import Job, Protocol, learning_curve_subsets, make_splits

TRAINER = "nnUNetTrainerLDBench"
QUICK_PLANS = "nnUNetPlansQuick"
QUICK_SCHEDULE = {"epochs": 2, "iterations": 6, "val_iterations": 1}
QUICK_MAX_FEATURES = 32
REPO = Path(__file__).resolve().parents[2]


def _dataset_paths(dataset: str) -> tuple[str, Path, Path]:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_raw or not nnUNet_preprocessed:
        raise ConfigError("nnUNet_raw and nnUNet_preprocessed must be set (nnU-Net's environment variables)")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise InputError(f"--dataset {dataset}: {e}") from None
    return name, Path(nnUNet_raw) / name, Path(nnUNet_preprocessed) / name


def case_files(folder: Path, ending: str) -> dict[str, list[Path]]:
    """{case id: [channel files]} of an imagesTr/imagesTs folder."""
    out: dict[str, list[Path]] = {}
    for f in sorted(folder.glob(f"*{ending}")):
        stem = f.name[: -len(ending)]
        case, _, channel = stem.rpartition("_")
        if case and channel.isdigit():
            out.setdefault(case, []).append(f)
    return out


def _ensure_plans(name: str, pre: Path, plans: str, configuration: str, quick: bool, quick_spacing: float) -> None:
    """Plan and preprocess when the plans or the preprocessed data are missing (quick: the coarse plans)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                       preprocess)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    did = convert_dataset_name_to_id(name)
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file():
        if not quick and plans != "nnUNetPlans":
            raise InputError(f"{plans_file}: missing; plan the dataset with these plans first")
        if not (pre / "dataset_fingerprint.json").is_file():
            extract_fingerprints([did], num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
        if quick:
            plan_experiments([did], overwrite_target_spacing=(quick_spacing,) * 3, overwrite_plans_name=plans)
            _coarsen(plans_file, configuration)
        else:
            plan_experiments([did])
    doc = json.loads(plans_file.read_text())
    if configuration not in doc["configurations"]:
        raise InputError(f"{plans_file}: no configuration {configuration!r}")
    ident = doc["configurations"][configuration].get("data_identifier", f"{plans}_{configuration}")
    if not (pre / ident).is_dir() or not any((pre / ident).iterdir()):
        preprocess([did], plans, configurations=(configuration,), num_processes=(1,), show_progress_bar=False)


def _coarsen(plans_file: Path, configuration: str) -> None:
    """Cap the network's features (nnU-Net's plans are data: editing them is nnU-Net's documented way)."""
    from ld_augment.io.atomic import atomic_write_json

    plans = json.loads(plans_file.read_text())
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(int(f), QUICK_MAX_FEATURES) for f in arch["features_per_stage"]]
    conf["batch_size"] = min(int(conf.get("batch_size", 2)), 2)
    plans["ld_quick"] = {"max_features": QUICK_MAX_FEATURES, "note": "gain benchmark --quick plans"}
    atomic_write_json(plans_file, plans)


def check_test_set_is_unseen(bank: Path, images_ts: Path) -> None:
    """Refuse a test set that a bank case was made from (by source id or by image content)."""
    from ld_augment.io.nifti import sha256_file
    from synthesis_bank.nnunet_io import read_bank_cases

    cases = read_bank_cases(bank)
    files = sorted(images_ts.glob("*_0000.*"))
    ids = {f.name.split("_0000.")[0] for f in files}
    shas = {c.source_sha256 for c in cases if c.source_sha256}
    overlap = sorted({c.case_id for c in cases if c.source_id in ids}
                     | {f.name for f in files if sha256_file(f) in shas})
    if overlap:
        raise InputError(f"{images_ts}: the test set overlaps the bank's sources ({len(overlap)}: {overlap[:5]}); "
                         f"gains measured on it would be inflated. Rebuild the bank without the test images")


def preflight(*, dataset: str, bank: str, out: Path, ratios: Sequence[float], folds: Sequence[str],
              seeds: int, n_real: Sequence[int], lesion_label: str | None, configuration: str, plans: str | None,
              device: str, quick: bool, quick_spacing: float, epochs: int | None, iterations: int | None,
              prepare_labels: Sequence[str] = ()) -> Protocol:
    """Every check and every preparation before training; writes OUT/protocol.json and OUT/splits.json."""
    from ld_augment.io.atomic import atomic_write_json
    from nnunet_trainers.gain.protocol import make_arms

    name, raw, pre = _dataset_paths(dataset)
    ds = gl.read_dataset_json(raw)
    ending = ds.get("file_ending", ".nii.gz")
    target = gl.resolve_lesion(ds["labels"], lesion_label, raw / "dataset.json")
    arms = make_arms(ratios, n_real)
    bank_dir = Path(bank).resolve()
    if not (bank_dir / "manifest.jsonl").is_file():
        raise InputError(f"{bank_dir}: not a bank (no manifest.jsonl); build one with `synthesis-bank build`")
    train_cases = sorted(case_files(raw / "imagesTr", ending))
    if not train_cases:
        raise InputError(f"{raw / 'imagesTr'}: no training images ending in {ending}")
    test_cases = sorted(case_files(raw / "imagesTs", ending)) if (raw / "labelsTs").is_dir() else []
    eval_source = "imagesTs" if test_cases else "heldout"
    label_dir, eval_ids = (raw / "labelsTs", test_cases) if test_cases else (raw / "labelsTr", train_cases)
    missing = [c for c in eval_ids if not (label_dir / f"{c}{ending}").is_file()]
    if missing:
        raise InputError(f"{label_dir}: no label file for {missing[:5]}")
    n_with_lesion = gl.check_label_files([label_dir / f"{c}{ending}" for c in eval_ids], ds["labels"],
                                         raw / "dataset.json", target)
    if n_with_lesion == 0:
        raise InputError(f"{label_dir}: no evaluation case holds the lesion label {target.name} "
                         f"{list(target.values)} of {raw / 'dataset.json'}; nothing to detect")
    if test_cases:
        check_test_set_is_unseen(bank_dir, raw / "imagesTs")
    existing = None
    if (pre / "splits_final.json").is_file():
        existing = json.loads((pre / "splits_final.json").read_text())
    splits, fold_names = make_splits(train_cases, folds, existing)
    if fold_names == ["all"] and eval_source == "heldout":
        raise InputError(f"--folds all holds no case out and {raw} has no imagesTs/labelsTs to evaluate on; "
                         f"use --folds loo")
    subsets = learning_curve_subsets(splits, fold_names, n_real)
    plans = plans or (QUICK_PLANS if quick else "nnUNetPlans")
    _ensure_plans(name, pre, plans, configuration, quick, quick_spacing)
    _prepare_bank(bank_dir, name, configuration, plans, prepare_labels)
    schedule = dict(QUICK_SCHEDULE) if quick else {"epochs": None, "iterations": None, "val_iterations": None}
    if epochs is not None:
        schedule["epochs"] = epochs
    if iterations is not None:
        schedule["iterations"] = iterations
    protocol = Protocol(out=str(out), dataset=name, bank=str(bank_dir), configuration=configuration, plans=plans,
                        trainer=TRAINER, device=device, lesion_name=target.name, lesion_values=list(target.values),
                        arms=[a.__dict__ for a in arms], folds=fold_names, seeds=list(range(seeds)), splits=splits,
                        train_subsets=subsets, eval_source=eval_source, schedule=schedule, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "splits.json", protocol.all_splits())
    protocol.save(out / "protocol.json")
    return protocol


def _prepare_bank(bank: Path, name: str, configuration: str, plans: str, labels: Sequence[str]) -> None:
    """`synthesis-bank prepare` for these plans (incremental: up-to-date cases are kept)."""
    cmd = [sys.executable, "-m", "synthesis_bank.prepare", "--bank", str(bank), "--target", name, "-c",
           configuration, "-p", plans, "-np", "1", "--no-progress"]
    if labels:
        cmd += ["--labels", *labels]
    proc = subprocess.run(cmd, env=_child_env({}), capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"{bank}: preparing the bank for {name} {plans} {configuration} failed before any "
                         f"training:\n{(proc.stderr or proc.stdout).strip()[-2000:]}")


def _child_env(extra: dict) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def job_environment(protocol: Protocol, job: Job) -> dict[str, str]:
    """What `nnUNetv2_train` needs for this job (also printed into the job list, so clusters see it)."""
    from nnunet_trainers.shim import ext_trainer_dir

    out = Path(protocol.out)
    env = {"nnUNet_results": str(out / "models" / job.arm.name / f"seed{job.seed}"),
           "nnUNet_extTrainer": str(ext_trainer_dir()), "LD_BANK_RATIO": str(job.arm.ratio),
           "LD_BENCH_SEED": str(job.seed), "LD_BENCH_SPLITS": str(out / "splits.json"), "LD_BENCH_SKIP_VAL": "1"}
    if job.arm.ratio > 0:
        env["LD_BANK_DIR"] = protocol.bank
    for key, var in (("epochs", "LD_BENCH_EPOCHS"), ("iterations", "LD_BENCH_ITERS"),
                     ("val_iterations", "LD_BENCH_VAL_ITERS")):
        if protocol.schedule.get(key) is not None:
            env[var] = str(protocol.schedule[key])
    if protocol.quick:
        env["nnUNet_n_proc_DA"] = "0"       # in-process augmentation: exactly repeatable runs, no worker start-up
    return env


def model_folder(protocol: Protocol, job: Job, results: Path) -> Path:
    """The job's nnU-Net results folder. The bank trainers run as their run-identity variant
    (`nnUNetTrainerLDBench_r050_<bank tag>`, nnunet_trainers.identity), and nnU-Net names the folder after it."""
    from nnunet_trainers.identity import run_name

    bank = protocol.bank if job.arm.ratio > 0 else None
    trainer = run_name(TRAINER, job.arm.ratio, bank)
    return results / protocol.dataset / f"{trainer}__{protocol.plans}__{protocol.configuration}"


def job_dir(protocol: Protocol, job: Job) -> Path:
    return Path(protocol.out) / "jobs" / job.arm.name / f"fold{job.fold}_seed{job.seed}"


def run_job_subprocess(protocol: Protocol, job: Job, script: Path) -> None:
    """Run one job in a fresh process (its own nnU-Net paths); skipped when its results exist (resumable)."""
    if (job_dir(protocol, job) / "rows.csv").is_file():
        print(f"[gain] {job.id}: done already, kept", flush=True)
        return
    print(f"[gain] {job.id}: training", flush=True)
    cmd = [sys.executable, str(script), "--out", protocol.out, "--job", job.id]
    proc = subprocess.run(cmd, env=_child_env({}))
    if proc.returncode != 0:
        raise ConfigError(f"job {job.id} failed (exit {proc.returncode}; nnU-Net's training log is in "
                          f"{Path(protocol.out) / 'models' / job.arm.name}); rerun it alone with: {' '.join(cmd)}")


def hardware() -> dict:
    import torch

    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_job(protocol: Protocol, job: Job) -> Path:
    """Train, predict and evaluate one job in this process (call after `job_environment` is in os.environ)."""
    import torch

    from ld_augment.io.atomic import atomic_write_json
    from nnunet_trainers.gain.report import write_rows

    folder = job_dir(protocol, job)
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(protocol.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))))
    t0 = time.perf_counter()
    from nnunetv2.run.run_training import run_training

    fold = protocol.split_index(job)
    run_training(protocol.dataset, protocol.configuration, fold if fold == "all" else int(fold), TRAINER,
                 protocol.plans, device=device)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = predict_and_evaluate(protocol, job, fold, device)
    t_pred = time.perf_counter() - t1
    write_rows(folder / "rows.csv", rows)
    model = model_folder(protocol, job, Path(os.environ["nnUNet_results"]))
    trainer_record = model / f"fold_{fold}" / "benchmark_trainer.json"
    atomic_write_json(folder / "run.json", {
        "job": job.id, "arm": job.arm.name, "ratio": job.arm.ratio, "n_real": job.arm.n_real, "fold": job.fold,
        "nnunet_fold": fold, "seed": job.seed, "train_seconds": round(t_train, 2),
        "predict_evaluate_seconds": round(t_pred, 2), "hardware": hardware(), "device": protocol.device,
        "trainer": json.loads(trainer_record.read_text()) if trainer_record.is_file() else None,
        "model_folder": str(model / f"fold_{fold}")})
    return folder


def predict_and_evaluate(protocol: Protocol, job: Job, fold: str, device) -> list[dict]:
    """Predict every evaluation case with nnU-Net (in process, probabilities kept) and evaluate it."""
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_raw, nnUNet_results

    from nnunet_trainers.gain.metrics import case_rows, lesion_probability

    raw = Path(nnUNet_raw) / protocol.dataset
    ds = json.loads((raw / "dataset.json").read_text())
    ending = ds.get("file_ending", ".nii.gz")
    held = protocol.eval_cases(job)
    images = case_files(raw / ("imagesTs" if held is None else "imagesTr"), ending)
    label_dir = raw / ("labelsTs" if held is None else "labelsTr")
    cases = sorted(images) if held is None else held
    model = model_folder(protocol, job, Path(nnUNet_results))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=not protocol.quick, device=device,
                                perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(fold if fold == "all" else int(fold),))
    lm = predictor.label_manager
    regions = [tuple(r) if isinstance(r, (list, tuple)) else (int(r),) for r in lm.foreground_regions] \
        if lm.has_regions else None
    rw = predictor.plans_manager.image_reader_writer_class()
    defs = gl.label_values(ds["labels"])
    out_dir = Path(protocol.out) / "predictions" / job.arm.name / f"fold{job.fold}_seed{job.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        img, props = rw.read_images([str(f) for f in images[case]])
        with torch.no_grad():
            seg, probs = predictor.predict_single_npy_array(img, {"spacing": props["spacing"]}, None, None, True)
        # region-based models: nnU-Net has already turned the regions into label values (regions_class_order)
        rw.write_seg(np.asarray(seg).astype(np.uint8), str(out_dir / f"{case}{ending}"), props)
        ref, ref_props = rw.read_seg(str(label_dir / f"{case}{ending}"))
        prob = lesion_probability(np.asarray(probs), protocol.lesion_values, regions)
        for lesion, metric, value in case_rows(np.asarray(seg), ref[0], ref_props["spacing"],
                                               protocol.lesion_values, defs, prob):
            rows.append({"arm": job.arm.name, "ratio": job.arm.ratio,
                         "n_real": "" if job.arm.n_real is None else job.arm.n_real, "fold": job.fold,
                         "seed": job.seed, "case": case, "lesion": lesion, "metric": metric, "value": value})
    return rows
