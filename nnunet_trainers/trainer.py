"""`nnUNetTrainerLesionDiffusion`: nnU-Net's trainer, with training samples drawn from a synthetic bank.

Each training sample comes from the bank with probability `ratio`, otherwise from the fold's real training
cases. Validation (per epoch and final) sees real cases only, because the parent's validation paths use
`do_split()` and the validation dataset, which are untouched. Bank cases made from a validation case of the
current fold are excluded (no leakage). Hooks overridden, and why:

* `get_tr_and_val_datasets` swaps the training dataset for a `MixedDataset` (nnU-Net's loader and
  augmentation stay as they are; see `nnunet_trainers.mixing`);
* `train_step` counts the bank keys of each batch actually trained on, then defers to the parent;
* `on_train_epoch_end` logs the realized synthetic fraction and records it in `lesiondiffusion_bank.json`;
* `__init__` only applies the class attributes that variants set (epochs, iterations).

Settings: `LD_BANK_DIR`, `LD_BANK_RATIO` (see `nnunet_trainers.config`), read when training starts, so
inference (`nnUNetv2_predict -tr nnUNetTrainerLesionDiffusion`) needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ld_augment.errors import ConfigError
from ld_augment.io.atomic import atomic_write_json
from nnunet_trainers.config import ENV_BANK_DIR, BankSettings, read_bank_settings
from nnunet_trainers.mixing import MixedDataset, count_synthetic, replication_for
from synthesis_bank.nnunet_io import (load_prepared_record, manifest_sha256, prepare_command, prepared_data_folder,
                                      read_bank_cases, sha256_json, split_leaking)

__all__ = ["nnUNetTrainerLesionDiffusion", "nnUNetTrainerLesionDiffusion_ratio25",
           "nnUNetTrainerLesionDiffusion_ratio75", "nnUNetTrainerLesionDiffusion_5iters"]

RECORD_FILE = "lesiondiffusion_bank.json"
RECORD_FORMAT = "ld-augment-trainer-bank/1"


class nnUNetTrainerLesionDiffusion(nnUNetTrainer):
    bank_ratio: float | None = None          # None: LD_BANK_RATIO, else 0.5
    ld_num_epochs: int | None = None         # None: nnU-Net's default
    ld_iterations_per_epoch: int | None = None
    ld_val_iterations_per_epoch: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.ld_num_epochs is not None:
            self.num_epochs = self.ld_num_epochs
        if self.ld_iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.ld_iterations_per_epoch
        if self.ld_val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.ld_val_iterations_per_epoch
        self._drawn_synthetic = 0
        self._drawn_total = 0
        self._bank_record: dict | None = None

    # --- data ---------------------------------------------------------------------------------------------
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        settings = read_bank_settings(self.bank_ratio, configuration=self.configuration_name,
                                      target=self.plans_manager.dataset_name)
        bank_ds, bank_keys, excluded, info = None, [], [], {}
        if settings.bank_dir is not None and settings.ratio > 0:
            bank_ds, bank_keys, excluded, info = self._load_bank(settings, list(dataset_val.identifiers))
        real_keys = list(dataset_tr.identifiers)
        if settings.ratio < 1 and not real_keys:
            raise ConfigError("this fold has no real training cases, so only a bank ratio of 1 can train")
        replication = replication_for(len(real_keys), len(bank_keys), settings.ratio)
        mixed = MixedDataset(dataset_tr, bank_ds, real_keys, bank_keys, replication)
        self.print_to_log_file(
            f"LesionDiffusion bank: {settings.bank_dir} ratio {settings.ratio} ({settings.ratio_source}), "
            f"{len(real_keys)} real + {len(bank_keys)} bank training cases, sampling ratio "
            f"{replication.effective_ratio:.4f}; excluded {len(excluded)} bank case(s) made from this fold's "
            f"validation cases")
        self._write_record(settings, replication.effective_ratio, real_keys, bank_keys, excluded, info)
        return mixed, dataset_val

    def _load_bank(self, settings: BankSettings, val_keys: List[str]):
        bank = settings.bank_dir
        name = self.plans_manager.dataset_name
        ident = self.configuration_manager.data_identifier
        plans_id = self.plans_manager.plans_name
        fix = prepare_command(bank, name, self.configuration_name, plans_id)
        record = load_prepared_record(bank, name, ident, configuration=self.configuration_name,
                                      plans_identifier=plans_id)
        manifest_hash = manifest_sha256(bank)
        if record["manifest_sha256"] != manifest_hash:
            raise ConfigError(f"{ENV_BANK_DIR}={bank}: the manifest changed since the bank was prepared; "
                              f"run: {fix}")
        if record["plans_sha256"] != sha256_json(self.plans_manager.plans):
            raise ConfigError(f"{ENV_BANK_DIR}={bank} was prepared with different {plans_id} plans of {name} "
                              f"(re-planned since?); run: {fix}")
        prepared = set(record["cases"])
        cases = [c for c in read_bank_cases(bank) if c.case_id in prepared]
        folder = prepared_data_folder(bank, name, ident)
        missing = [c.case_id for c in cases if not (folder / f"{c.case_id}.pkl").is_file()]
        if missing:
            raise ConfigError(f"{folder}: {len(missing)} prepared case(s) missing (e.g. {missing[0]}); run: {fix}")
        if self.fold == "all":   # no held-out cases, nothing can leak
            usable, excluded = cases, []
        else:
            usable, excluded = split_leaking(cases, val_keys)
        if not usable:
            raise ConfigError(f"{ENV_BANK_DIR}={bank}: no usable bank cases for fold {self.fold} "
                              f"({len(excluded)} excluded as made from validation cases)")
        dataset_class = infer_dataset_class(str(folder))
        dataset_class.unpack_dataset(str(folder), overwrite_existing=False, num_processes=1, verify=True)
        bank_keys = [c.case_id for c in usable]
        bank_ds = dataset_class(str(folder), identifiers=list(bank_keys))
        info = {"manifest_sha256": manifest_hash, "plans_sha256": record["plans_sha256"],
                "prepared_folder": str(folder)}
        return bank_ds, bank_keys, [c.case_id for c in excluded], info

    # --- bookkeeping --------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        synthetic, total = count_synthetic(batch.get('keys', ()))
        self._drawn_synthetic += synthetic
        self._drawn_total += total
        return super().train_step(batch)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        frac = self._drawn_synthetic / self._drawn_total if self._drawn_total else float('nan')
        self.print_to_log_file(f"LesionDiffusion realized synthetic fraction: {frac:.3f} "
                               f"({self._drawn_synthetic}/{self._drawn_total} samples)")
        if self._bank_record is not None and self.local_rank == 0:
            epochs = [e for e in self._bank_record["epochs"] if e["epoch"] != self.current_epoch]
            epochs.append({"epoch": self.current_epoch, "synthetic": self._drawn_synthetic,
                           "samples": self._drawn_total, "fraction": frac})
            self._bank_record["epochs"] = epochs
            atomic_write_json(Path(self.output_folder) / RECORD_FILE, self._bank_record)
        self._drawn_synthetic = self._drawn_total = 0

    def _write_record(self, settings: BankSettings, effective: float, real_keys, bank_keys, excluded,
                      info: dict) -> None:
        path = Path(self.output_folder) / RECORD_FILE
        epochs = []
        if path.is_file():   # continued training keeps the history of earlier epochs
            try:
                epochs = [e for e in json.loads(path.read_text()).get("epochs", [])
                          if e.get("epoch", 0) < self.current_epoch]
            except (json.JSONDecodeError, AttributeError):
                epochs = []
        self._bank_record = {
            "format": RECORD_FORMAT,
            "trainer": self.__class__.__name__,
            "fold": self.fold,
            "bank_dir": str(settings.bank_dir) if settings.bank_dir else None,
            "manifest_sha256": info.get("manifest_sha256"),
            "plans_sha256": info.get("plans_sha256"),
            "prepared_folder": info.get("prepared_folder"),
            "ratio": settings.ratio,
            "ratio_source": settings.ratio_source,
            "sampling_ratio": effective,
            "n_real_train": len(real_keys),
            "n_bank_used": len(bank_keys),
            "excluded_count": len(excluded),
            "excluded_ids": list(excluded),
            "epochs": epochs,
        }
        if self.local_rank == 0:
            atomic_write_json(path, self._bank_record)


class nnUNetTrainerLesionDiffusion_ratio25(nnUNetTrainerLesionDiffusion):
    bank_ratio = 0.25


class nnUNetTrainerLesionDiffusion_ratio75(nnUNetTrainerLesionDiffusion):
    bank_ratio = 0.75


class nnUNetTrainerLesionDiffusion_5iters(nnUNetTrainerLesionDiffusion):
    """CI/smoke variant: 2 epochs of 5 training and 2 validation iterations."""
    ld_num_epochs = 2
    ld_iterations_per_epoch = 5
    ld_val_iterations_per_epoch = 2


def _epochs_variant(n: int) -> type:
    return type(f"nnUNetTrainerLesionDiffusion_{n}epochs", (nnUNetTrainerLesionDiffusion,),
                {"ld_num_epochs": n, "__module__": __name__,
                 "__doc__": f"nnUNetTrainerLesionDiffusion for {n} epochs (pairs with nnUNetTrainer_{n}epochs)."})


# the same lengths as nnU-Net's nnUNetTrainer_Xepochs, so benchmarks can compare like with like
EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250, 500)
for _n in EPOCH_VARIANTS:
    _cls = _epochs_variant(_n)
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
del _n, _cls
