"""`nnUNetTrainerLDBench`: the benchmark's trainer, for every arm (real-only = bank ratio 0).

nnUNetv2_train has no seed or split option, so this variant reads them from the environment (configuration as
data, recorded in `fold_X/benchmark_trainer.json`):

LD_BENCH_SEED        seeds Python's `random`, numpy's global RNG (which nnU-Net's data loader and
                     batchgenerators' transforms draw from) and torch, at the start of training, and turns
                     cuDNN autotuning off. Runs repeat exactly when data augmentation runs in-process
                     (nnUNet_n_proc_DA=0); with augmentation workers the worker RNGs are batchgenerators' own
                     (recorded as not reproducible).
LD_BENCH_SPLITS      a JSON list of {"train", "val"}: the fold number indexes it (instead of the dataset's
                     splits_final.json, which stays untouched).
LD_BENCH_EPOCHS, LD_BENCH_ITERS, LD_BENCH_VAL_ITERS   a short schedule (unset: nnU-Net's 1000 x 250 / 50).
LD_BENCH_SKIP_VAL=1  skips nnU-Net's final validation (the benchmark predicts its evaluation cases itself).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ld_augment.errors import ConfigError
from ld_augment.io.atomic import atomic_write_json
from nnunet_trainers.trainer import nnUNetTrainerLesionDiffusion

__all__ = ["nnUNetTrainerLDBench", "seed_everything"]


def seed_everything(seed: int) -> dict:
    """Seed random, numpy's global RNG and torch (all devices); returns what was seeded, for the record."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return {"seed": seed, "seeded": ["random", "numpy", "torch"] + (["cuda"] if torch.cuda.is_available() else [])}


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


class nnUNetTrainerLDBench(nnUNetTrainerLesionDiffusion):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attr, env in (("num_epochs", "LD_BENCH_EPOCHS"), ("num_iterations_per_epoch", "LD_BENCH_ITERS"),
                          ("num_val_iterations_per_epoch", "LD_BENCH_VAL_ITERS")):
            value = _int_env(env)
            if value is not None:
                setattr(self, attr, value)
        self.ld_seed = _int_env("LD_BENCH_SEED")
        # nnU-Net weights deep-supervision outputs 1/2^i and zeroes the lowest; with fewer than 3 stages (tiny
        # images at a coarse spacing) the weights sum to 0 and every loss is NaN, so train those without it
        arch = self.configuration_manager.network_arch_init_kwargs
        n_stages = int(arch.get("n_stages", len(arch.get("strides", [])) or 3))
        if n_stages < 3:
            self.enable_deep_supervision = False

    def do_split(self):
        path = os.environ.get("LD_BENCH_SPLITS", "")
        if not path or self.fold == "all":
            return super().do_split()
        splits = json.loads(Path(path).read_text())
        if not 0 <= int(self.fold) < len(splits):
            raise ConfigError(f"LD_BENCH_SPLITS={path} has {len(splits)} folds; fold {self.fold} requested")
        split = splits[int(self.fold)]
        self.print_to_log_file(f"Benchmark split {self.fold} from {path}: {len(split['train'])} training, "
                               f"{len(split['val'])} validation cases")
        return list(split["train"]), list(split["val"])

    def on_train_start(self):
        record = {"trainer": type(self).__name__, "fold": self.fold, "num_epochs": self.num_epochs,
                  "iterations_per_epoch": self.num_iterations_per_epoch,
                  "val_iterations_per_epoch": self.num_val_iterations_per_epoch,
                  "deep_supervision": self.enable_deep_supervision,
                  "splits_file": os.environ.get("LD_BENCH_SPLITS") or None,
                  "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA")}
        if self.ld_seed is not None:
            record.update(seed_everything(self.ld_seed + self.local_rank))
            record["reproducible"] = os.environ.get("nnUNet_n_proc_DA", "").strip() == "0"
        else:
            record["seed"] = None
        super().on_train_start()
        if self.local_rank == 0:
            atomic_write_json(Path(self.output_folder) / "benchmark_trainer.json", record)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("LD_BENCH_SKIP_VAL", "") == "1":
            self.print_to_log_file("LD_BENCH_SKIP_VAL=1: final validation skipped (the benchmark predicts itself)")
            return
        return super().perform_actual_validation(save_probabilities)
