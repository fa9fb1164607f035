"""Organ segmentation through TotalSegmentator, checked first and isolated in a subprocess.

Why so careful: TotalSegmentator 2.x (checked against 2.18) downloads missing weights with no timeout (a
silent network hangs forever), rewrites nnUNet_raw/preprocessed/results in the calling process (breaking an
nnU-Net training running there) and switches on usage statistics in its config. So: the weight files are
checked before anything starts (MissingDependencyError at once, with the install command), the run happens
in a child process with a timeout, and the child gets a private config with statistics off unless asked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ld_augment.errors import ConfigError, ExternalServiceError, MissingDependencyError
from ld_augment.io.atomic import atomic_path
from ld_augment.io.nifti import load_ct
from ld_augment.organs.registry import GROUPS, class_map, normalize_organ_name

# From totalsegmentator/map_tasks_config.py (TASK_CONFIGS["total"], TASK_ID_WEIGHTS_CONFIGS), version 2.x.
DATASET_FOLDERS = {
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
TRAINER_FAST = "nnUNetTrainer_4000epochs_NoMirroring"  # 297 (fast, 3 mm) and 298 (roi_subset crop, 6 mm)
TRAINER_FULL = "nnUNetTrainerNoMirroring"  # 291-295 (1.5 mm, five parts)
PLANS_CONFIG = "nnUNetPlans__3d_fullres"
MODEL_FILES = ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth")
INSTALL_HINT = (
    "Install them once with `totalseg_download_weights -t {task}` (needs network) or copy the folders there; "
    "set TOTALSEG_HOME_DIR or TOTALSEG_WEIGHTS_PATH to use another folder. Alternatively pass your own organ "
    "segmentation (TotalSegmentator v1/v2 ids or a binary mask)."
)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class RequiredModel:
    """One nnU-Net model folder TotalSegmentator will load."""

    dataset_id: int
    trainer: str

    def folder(self, weights_dir: Path) -> Path:
        return weights_dir / DATASET_FOLDERS[self.dataset_id] / f"{self.trainer}__{PLANS_CONFIG}"


def totalseg_weights_dir() -> Path:
    """The folder TotalSegmentator reads weights from (same rules as totalsegmentator.config.get_weights_dir)."""
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if "TOTALSEG_HOME_DIR" in os.environ:
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        home = (Path("/tmp") if str(Path.home()) == "/" else Path.home()) / ".totalsegmentator"
    return home / "nnunet" / "results"


def required_models(*, fast: bool, roi_subset: bool = True) -> tuple[RequiredModel, ...]:
    """Models task "total" loads: 297 when fast, else 291-295; plus 298 (6 mm crop) with a roi_subset."""
    models = [RequiredModel(297, TRAINER_FAST)] if fast else [RequiredModel(i, TRAINER_FULL) for i in range(291, 296)]
    if roi_subset:
        models.append(RequiredModel(298, TRAINER_FAST))
    return tuple(models)


def missing_weight_files(weights_dir: Path, models: Sequence[RequiredModel]) -> list[Path]:
    return [m.folder(weights_dir) / f for m in models for f in MODEL_FILES if not (m.folder(weights_dir) / f).is_file()]


def check_weights(weights_dir: str | os.PathLike | None = None, *, fast: bool = True, roi_subset: bool = True) -> Path:
    """Return the weights folder when every needed file exists; else MissingDependencyError at once."""
    folder = Path(weights_dir) if weights_dir is not None else totalseg_weights_dir()
    missing = missing_weight_files(folder, required_models(fast=fast, roi_subset=roi_subset))
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:6]) + ("\n  ..." if len(missing) > 6 else "")
        raise MissingDependencyError(
            f"TotalSegmentator weights for task 'total'{' (fast)' if fast else ''} are not installed in "
            f"{folder}; missing:\n  {shown}\n"
            + INSTALL_HINT.format(task="total_fast" if fast else "total")
        )
    return folder


def roi_subset_for(organs: Sequence[str]) -> list[str]:
    """TotalSegmentator v2 class names for the organs (groups expanded), in a stable order."""
    v2_names = set(class_map("v2").values())
    names: list[str] = []
    for organ in organs:
        canonical = normalize_organ_name(organ)
        members = [canonical] if canonical in v2_names else [m for m in GROUPS.get(canonical, ()) if m in v2_names]
        if not members:
            raise ConfigError(
                f"organ {canonical!r} is not a TotalSegmentator v2 ('total') class; it cannot be segmented"
            )
        names.extend(m for m in members if m not in names)
    if not names:
        raise ConfigError("segment_organs: give at least one organ")
    return names


def totalseg_device(device: str) -> str:
    """Our device names (torch style: cpu, cuda, cuda:N, mps; or gpu, gpu:N) in TotalSegmentator's spelling.

    Its API accepts only cpu, mps, gpu and gpu:N; "cuda:0" would crash inside it.
    """
    match = re.fullmatch(r"(cpu|mps)|(?:gpu|cuda)(?::(\d+))?", str(device))
    if not match:
        raise ConfigError(f"unknown device {device!r}; choose cpu, cuda, cuda:N, gpu, gpu:N or mps")
    if match.group(1):
        return match.group(1)
    return f"gpu:{match.group(2)}" if match.group(2) is not None else "gpu"


def _run_subprocess(cmd: list[str], *, env: dict[str, str], timeout: float) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True, check=False)


def _child_env(weights_dir: Path, statistics: bool, private_home: Path) -> dict[str, str]:
    """The child's environment: our weights folder, and (statistics off) a private config with stats disabled."""
    env = dict(os.environ)
    env["TOTALSEG_WEIGHTS_PATH"] = str(weights_dir)
    if not statistics:
        private_home.mkdir(parents=True, exist_ok=True)
        config = {"totalseg_id": "ld_augment", "send_usage_stats": False, "prediction_counter": 0,
                  "statistics_disclaimer_shown": True}
        (private_home / "config.json").write_text(json.dumps(config), encoding="utf-8")
        env["TOTALSEG_HOME_DIR"] = str(private_home)
    return env


def segment_organs(
    ct_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    organs: Sequence[str],
    fast: bool = True,
    device: str = "cpu",
    statistics: bool = False,
    timeout_s: float = 3600,
    weights_dir: str | os.PathLike | None = None,
    runner: Runner | None = None,
) -> Path:
    """Segment `organs` in a CT with TotalSegmentator ("total" task, v2 ids) into `out_path` (multilabel NIfTI).

    `statistics`: let TotalSegmentator send its usage statistics (off by default). `runner` replaces
    subprocess.run (tests). Raises MissingDependencyError (package or weights missing, at once),
    ExternalServiceError (the run failed or exceeded `timeout_s`), InputError (bad CT).
    """
    ct = Path(ct_path)
    load_ct(ct)  # fail on a bad CT here, with our message, not deep inside TotalSegmentator
    roi = roi_subset_for(organs)
    ts_device = totalseg_device(device)
    if importlib.util.find_spec("totalsegmentator") is None:
        raise MissingDependencyError("TotalSegmentator is not installed: pip install 'TotalSegmentator>=2.4,<3'")
    folder = check_weights(weights_dir, fast=fast, roi_subset=True)
    run = runner or _run_subprocess
    with tempfile.TemporaryDirectory(prefix="ld_totalseg_") as tmp, atomic_path(out_path) as out_tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps({"input": str(ct.resolve()), "output": str(out_tmp), "fast": fast,
                                         "roi_subset": roi, "device": ts_device}), encoding="utf-8")
        cmd = [sys.executable, "-m", "ld_augment.organs._totalseg_worker", str(args_file)]
        try:
            result = run(cmd, env=_child_env(folder, statistics, Path(tmp) / "home"), timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise ExternalServiceError(f"TotalSegmentator on {ct} did not finish within {timeout_s:g} s") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip()[-2000:]
            raise ExternalServiceError(f"TotalSegmentator failed on {ct} (exit code {result.returncode}):\n{tail}")
        if not out_tmp.is_file() or out_tmp.stat().st_size == 0:
            raise ExternalServiceError(f"TotalSegmentator finished on {ct} but wrote no segmentation")
    return Path(out_path)

