"""`nnUNetTrainerLesionDiffusion`: nnU-Net's trainer, with training samples drawn from a synthetic bank.

Each training sample comes from the bank with probability `ratio`, otherwise from the fold's real training
cases (two-stage sampling, exact for any bank size). Validation (per epoch and final) sees real cases only,
because the parent's validation paths use `do_split()` and the validation dataset, which are untouched. Bank
cases made from a validation case of the current fold (same case id, or the same image content by sha256) or
from a test image are excluded (no leakage). Hooks overridden, and why:

* `get_tr_and_val_datasets` swaps the training dataset for a `MixedDataset` (see `nnunet_trainers.mixing`);
* `get_dataloaders` lets nnU-Net build its own loaders, handing the training loader the two-stage sampling
  probabilities (nnU-Net passes `sampling_probabilities=None` inline and has no hook for it);
* `train_step` counts the bank keys of each batch actually trained on, then defers to the parent;
* `on_train_epoch_end` logs the realized synthetic fraction (summed over DDP ranks) and records it in
  `lesiondiffusion_bank.json`;
* `__init__` only applies the class attributes that variants set (epochs, iterations).

Composes with other trainer variants by multiple inheritance, ours first:
`class MyTrainer(nnUNetTrainerLesionDiffusion, nnUNetTrainerDA5): pass`.

Settings: `LD_BANK_DIR`, `LD_BANK_RATIO`, `LD_BANK_ALLOW_CHANGE` (see `nnunet_trainers.config`), read when
training starts, so inference (`nnUNetv2_predict -tr nnUNetTrainerLesionDiffusion`) needs none.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, List

import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader as _NNUNET_LOADER
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ld_augment.errors import ConfigError, LdAugmentError
from ld_augment.io.atomic import atomic_write_json
from ld_augment.io.nifti import sha256_file
from nnunet_trainers.config import ENV_ALLOW_CHANGE, ENV_BANK_DIR, ENV_BANK_RATIO, BankSettings, allow_change, \
    read_bank_settings
from nnunet_trainers import identity
from nnunet_trainers.composed import load_patch_bank
from nnunet_trainers.mixing import MixedDataset, count_synthetic
from synthesis_bank.patch_io import is_patch_bank
from synthesis_bank.nnunet_io import (load_prepared_record, manifest_sha256, prepare_command, prepared_data_folder,
                                      preprocessing_sha256, read_bank_cases, sha256_json, split_leaking)

__all__ = ["nnUNetTrainerLesionDiffusion", "nnUNetTrainerLesionDiffusion_ratio25",
           "nnUNetTrainerLesionDiffusion_ratio75", "nnUNetTrainerLesionDiffusion_5iters"]

RECORD_FILE = "lesiondiffusion_bank.json"
RECORD_FORMAT = "ld-augment-trainer-bank/2"
# what a continued run (`--c`) must share with the run it continues, unless LD_BANK_ALLOW_CHANGE=1
CONTINUATION_KEYS = ("bank_dir", "manifest_sha256", "data_sha256", "ratio")


def _two_stage_factory(original: type):
    """Stands in for nnUNetDataLoader while nnU-Net builds its loaders: a MixedDataset gets its probabilities."""
    def make(data, *args, **kwargs):
        if isinstance(data, MixedDataset):
            if len(args) > 5:
                args = (*args[:5], data.sampling_probabilities, *args[6:])
            else:
                kwargs["sampling_probabilities"] = data.sampling_probabilities
        return original(data, *args, **kwargs)
    return make


@contextlib.contextmanager
def _two_stage_loaders(trainer_cls: type) -> Iterator[None]:
    """Point the `nnUNetDataLoader` name of every module in the trainer's MRO at `_two_stage_factory`.

    Not a copy of `get_dataloaders`: nnU-Net's own method (or a variant's) keeps building the loaders and the
    augmentation; only the sampling probabilities it passes as None are filled in. Restored on exit.
    """
    patched = []
    for cls in trainer_cls.__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "nnUNetDataLoader", None) is _NNUNET_LOADER:
            patched.append(module)
            module.nnUNetDataLoader = _two_stage_factory(_NNUNET_LOADER)
    try:
        yield
    finally:
        for module in patched:
            module.nnUNetDataLoader = _NNUNET_LOADER


def _inner_loader(augmenter: Any) -> Any:
    """The nnUNetDataLoader inside nnU-Net's Single/NonDetMultiThreadedAugmenter."""
    return getattr(augmenter, "data_loader", None) or getattr(augmenter, "generator", None)


class nnUNetTrainerLesionDiffusion(nnUNetTrainer):
    bank_ratio: float | None = None          # None: LD_BANK_RATIO, else 0.5
    ld_bank_tag: str | None = None           # run-identity variants: the bank they were named for
    ld_run_identity: bool = False            # True for `<trainer>_r<ratio>_<bank tag>` (nnunet_trainers.identity)
    ld_num_epochs: int | None = None         # None: nnU-Net's default
    ld_iterations_per_epoch: int | None = None
    ld_val_iterations_per_epoch: int | None = None

    def __new__(cls, *args: Any, **kwargs: Any):
        """Instantiate the run-identity variant (`<cls>_r<ratio>_<bank tag>`) instead of `cls`, so that nnU-Net
        names the results folder (and the checkpoint's trainer) after ratio and bank. Settings that cannot be
        resolved here are left to `get_tr_and_val_datasets`, which reports them."""
        target = cls
        if not cls.ld_run_identity:
            try:
                settings = read_bank_settings(cls.bank_ratio)
                name = identity.run_name(cls.__name__, settings.ratio, settings.bank_dir)
            except LdAugmentError:
                name = None
            target = (identity.variant(name, base=cls) if name else None) or cls
        return super().__new__(target)

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
        settings = read_bank_settings(self.bank_ratio, configuration=self.configuration_name,
                                      target=self.plans_manager.dataset_name)
        if settings.bank_dir is not None and settings.ratio > 0:
            self._refuse_cascade()
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        bank_ds, bank_keys, excluded, info = None, [], {}, {}
        if settings.bank_dir is not None and settings.ratio > 0:
            bank_ds, bank_keys, excluded, info = self._load_bank(settings, list(dataset_val.identifiers))
            self._check_bank_tag(settings)
        real_keys = list(dataset_tr.identifiers)
        if settings.ratio < 1 and not real_keys:
            raise ConfigError("this fold has no real training cases, so only a bank ratio of 1 can train")
        mixed = MixedDataset(dataset_tr, bank_ds, real_keys, bank_keys, settings.ratio)
        n_excluded = sum(len(v) for v in excluded.values())
        self.print_to_log_file(
            f"LesionDiffusion bank: {settings.bank_dir} ratio {settings.ratio} ({settings.ratio_source}), "
            f"{len(real_keys)} real + {len(bank_keys)} bank training cases, sampling ratio {mixed.ratio:.4f}; "
            f"excluded {n_excluded} bank case(s) made from this fold's validation or the test cases")
        self._write_record(settings, mixed.ratio, real_keys, bank_keys, excluded, info)
        return mixed, dataset_val

    def get_dataloaders(self):
        with _two_stage_loaders(type(self)):
            dl_tr, dl_val = super().get_dataloaders()
        loader = _inner_loader(dl_tr)
        data = getattr(loader, "_data", None)
        if isinstance(data, MixedDataset) and data.bank_keys and loader.sampling_probabilities is None:
            raise ConfigError(f"{type(self).__name__}: the training loader was built without the bank's sampling "
                              f"probabilities (a variant that constructs its loader differently?); put "
                              f"nnUNetTrainerLesionDiffusion first in the class bases")
        return dl_tr, dl_val

    def _check_bank_tag(self, settings: BankSettings) -> None:
        """A run named for one bank trains with that bank: another manifest is another run (or an allowed,
        recorded change)."""
        tag = type(self).ld_bank_tag
        if tag is None:
            return
        now = identity.bank_tag(settings.bank_dir)
        if now != tag and not allow_change():
            raise ConfigError(
                f"{type(self).__name__} is the run with the bank whose manifest sha256 starts {tag}, but "
                f"{ENV_BANK_DIR}={settings.bank_dir} is bank {now} (another bank, or this one rebuilt or grown). "
                f"Train it as its own run (-tr {identity.run_name(identity.parse_run_name(type(self).__name__)[0], settings.ratio, settings.bank_dir)}), "
                f"point {ENV_BANK_DIR} at the bank {tag}, or set {ENV_ALLOW_CHANGE}=1 to continue with it")

    def _refuse_cascade(self) -> None:
        """Bank cases have no previous-stage segmentation, which the cascade's transforms need: refuse before
        the first epoch rather than crash in the data loader."""
        if self.is_cascaded:
            name = self.plans_manager.dataset_name
            previous = self.configuration_manager.previous_stage_name
            raise ConfigError(
                f"{self.configuration_name} is a cascade stage: it needs previous-stage ({previous}) "
                f"segmentations, which bank cases do not have. Train the bank with the "
                f"full-resolution model instead (nnUNetv2_train {name} 3d_fullres {self.fold} -tr "
                f"{type(self).__name__}), or train this cascade without the bank ({ENV_BANK_RATIO}=0)")

    def _load_bank(self, settings: BankSettings, val_keys: List[str]):
        bank = settings.bank_dir
        if is_patch_bank(read_bank_cases(bank)):   # composed at load time (nnunet_trainers.composed)
            return load_patch_bank(self, Path(bank), val_keys, env_name=ENV_BANK_DIR)
        name = self.plans_manager.dataset_name
        ident = self.configuration_manager.data_identifier
        plans_id = self.plans_manager.plans_name
        fix = prepare_command(bank, name, self.configuration_name, plans_id)
        record, doc = load_prepared_record(bank, name, configuration=self.configuration_name,
                                           plans_identifier=plans_id)
        manifest_hash = manifest_sha256(bank)
        if record["manifest_sha256"] != manifest_hash:
            raise ConfigError(f"{ENV_BANK_DIR}={bank}: the manifest changed since the bank was prepared; "
                              f"run: {fix}")
        current = preprocessing_sha256(self.plans_manager.plans, self.configuration_manager.configuration,
                                       self.dataset_json)
        if record["preprocessing_sha256"] != current or record.get("data_identifier") != ident:
            raise ConfigError(f"{ENV_BANK_DIR}={bank} was prepared with other preprocessing settings of {plans_id} "
                              f"{self.configuration_name} for {name} (re-planned since?); run: {fix}")
        table = doc.get("data", {}).get(ident, {})
        data_sha = sha256_json({c: table.get(c) for c in record["cases"]})
        if data_sha != record.get("data_sha256"):
            raise ConfigError(f"{ENV_BANK_DIR}={bank}: the prepared cases in {ident} were rewritten since this "
                              f"record (a prepare with other settings for the same data?); run: {fix}")
        prepared = set(record["cases"])
        cases = [c for c in read_bank_cases(bank) if c.case_id in prepared]
        folder = prepared_data_folder(bank, name, ident)
        missing = [c.case_id for c in cases if not (folder / f"{c.case_id}.pkl").is_file()]
        if missing:
            raise ConfigError(f"{folder}: {len(missing)} prepared case(s) missing (e.g. {missing[0]}); run: {fix}")
        usable, from_val, from_test = self._split_leaks(
            cases, val_keys, doc.get("target_images", {}), record.get("test_sources_allowed", []),
            doc.get("near_duplicates", {}), where=f"{ENV_BANK_DIR}={bank}")
        dataset_class = infer_dataset_class(str(folder))
        dataset_class.unpack_dataset(str(folder), overwrite_existing=False, num_processes=1, verify=True)
        bank_keys = [c.case_id for c in usable]
        bank_ds = dataset_class(str(folder), identifiers=list(bank_keys))
        info = {"manifest_sha256": manifest_hash, "preprocessing_sha256": current, "data_sha256": data_sha,
                "prepared_folder": str(folder), "label_mapping": record.get("label_mapping")}
        excluded = {"validation": [c.case_id for c in from_val], "test": [c.case_id for c in from_test]}
        return bank_ds, bank_keys, excluded, info

    def _split_leaks(self, cases: list, val_keys: List[str], images: dict, allowed_test, near: dict, *,
                     where: str) -> tuple[list, list, list]:
        """(usable, made from this fold's validation cases, made from test cases) by id, file hash or near-duplicate
        content (`near`, from prepare); test sources the user allowed at prepare stay usable. One rule for full
        and patch banks."""
        test = images.get("imagesTs", {})
        allowed = set(allowed_test)
        usable, from_test = split_leaking(cases, test, [v["sha256"] for v in test.values()], near.get("imagesTs"))
        usable += [c for c in from_test if c.case_id in allowed]
        from_test = [c for c in from_test if c.case_id not in allowed]
        from_val: list = []
        if self.fold != "all":   # fold "all" holds nothing out
            usable, from_val = split_leaking(usable, val_keys, self._validation_hashes(images, val_keys),
                                             near.get("imagesTr"))
            self._log_near_duplicates(from_val, val_keys, near)
        if not usable:
            raise ConfigError(f"{where}: no usable bank cases for fold {self.fold} ({len(from_val)} excluded as made "
                              f"from validation cases, {len(from_test)} from test cases)")
        return usable, from_val, from_test

    def _log_near_duplicates(self, excluded, val_keys: List[str], near: dict) -> None:
        """Say why a bank case left by content: the validation case it copies and the measured correlation."""
        from synthesis_bank.near_duplicates import describe

        val = set(val_keys)
        for case in excluded:
            hits = {k: r for k, r in near.get("imagesTr", {}).get(case.case_id, {}).items() if k in val}
            if hits:
                self.print_to_log_file(f"LesionDiffusion leakage guard: {case.case_id} excluded, its image is a "
                                       f"near-duplicate of validation case {describe(hits)} (threshold "
                                       f"r>={near.get('threshold')})")

    def _validation_hashes(self, images: dict, val_keys: List[str]) -> list[str]:
        """sha256 of this fold's validation images: from the prepare record, else hashed from nnUNet_raw."""
        from nnunetv2.paths import nnUNet_raw

        recorded = images.get("imagesTr", {})
        shas, unhashed = [], []
        for key in val_keys:
            if key in recorded:
                shas.append(recorded[key]["sha256"])
                continue
            ending = self.dataset_json.get("file_ending", ".nii.gz")
            path = Path(nnUNet_raw.get() or "") / self.plans_manager.dataset_name / "imagesTr" / f"{key}_0000{ending}"
            if nnUNet_raw.is_set() and path.is_file():
                shas.append(sha256_file(path))
            else:
                unhashed.append(key)
        if unhashed:
            self.print_to_log_file(f"LesionDiffusion leakage guard: {len(unhashed)} validation image(s) not found "
                                   f"in nnUNet_raw (e.g. {unhashed[0]}); those are matched by case id only")
        return shas

    # --- bookkeeping --------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        synthetic, total = count_synthetic(batch.get('keys', ()))
        self._drawn_synthetic += synthetic
        self._drawn_total += total
        return super().train_step(batch)

    def _global_counts(self) -> tuple[int, int]:
        """(bank draws, all draws) of this epoch over all DDP ranks."""
        counts = [self._drawn_synthetic, self._drawn_total]
        if self.is_ddp:
            import torch.distributed as dist

            tensor = torch.tensor(counts, dtype=torch.long, device=self.device)
            dist.all_reduce(tensor)
            counts = [int(v) for v in tensor.tolist()]
        return counts[0], counts[1]

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        synthetic, total = self._global_counts()
        frac = synthetic / total if total else float('nan')
        self.print_to_log_file(f"LesionDiffusion realized synthetic fraction: {frac:.3f} "
                               f"({synthetic}/{total} samples)")
        if self._bank_record is not None and self.local_rank == 0:
            epochs = [e for e in self._bank_record["epochs"] if e["epoch"] != self.current_epoch]
            epochs.append({"epoch": self.current_epoch, "synthetic": synthetic, "samples": total, "fraction": frac})
            self._bank_record["epochs"] = epochs
            atomic_write_json(Path(self.output_folder) / RECORD_FILE, self._bank_record)
        self._drawn_synthetic = self._drawn_total = 0

    def _write_record(self, settings: BankSettings, effective: float, real_keys, bank_keys, excluded: dict,
                      info: dict) -> None:
        path = Path(self.output_folder) / RECORD_FILE
        previous = None
        if path.is_file() and self.current_epoch > 0:   # continued training (--c)
            try:
                previous = json.loads(path.read_text())
            except json.JSONDecodeError:
                previous = None
        record = {
            "format": RECORD_FORMAT,
            "trainer": self.__class__.__name__,
            "fold": self.fold,
            "bank_dir": str(settings.bank_dir) if settings.bank_dir else None,
            "manifest_sha256": info.get("manifest_sha256"),
            "preprocessing_sha256": info.get("preprocessing_sha256"),
            "data_sha256": info.get("data_sha256"),
            "prepared_folder": info.get("prepared_folder"),
            "label_mapping": info.get("label_mapping"),
            "ratio": settings.ratio,
            "ratio_source": settings.ratio_source,
            "sampling_ratio": effective,
            "n_real_train": len(real_keys),
            "n_bank_used": len(bank_keys),
            "excluded_count": sum(len(v) for v in excluded.values()),
            "excluded_ids": sorted(k for v in excluded.values() for k in v),
            "excluded": excluded,
            "changes": [],
            "epochs": [],
        }
        if previous is not None:
            record["changes"] = list(previous.get("changes", []))
            record["epochs"] = [e for e in previous.get("epochs", []) if e.get("epoch", 0) < self.current_epoch]
            changed = {k: {"was": previous.get(k), "now": record[k]} for k in CONTINUATION_KEYS
                       if previous.get(k) != record[k]}
            if changed and not allow_change():
                raise ConfigError(
                    f"--c continues {path.parent} with other bank settings than it was trained with: "
                    + "; ".join(f"{k} was {v['was']!r}, now {v['now']!r}" for k, v in changed.items())
                    + f". Restore them ({ENV_BANK_DIR}, {ENV_BANK_RATIO}, re-prepare) or set {ENV_ALLOW_CHANGE}=1 "
                      f"to continue with the change (it is recorded in {RECORD_FILE})")
            if changed:
                record["changes"].append({"epoch": self.current_epoch, "changed": changed})
                self.print_to_log_file(f"LesionDiffusion: continuing with changed bank settings "
                                       f"({', '.join(changed)}; {ENV_ALLOW_CHANGE}=1)")
        self._bank_record = record
        if self.local_rank == 0:
            atomic_write_json(path, record)


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


def __getattr__(name: str) -> type:
    """Run-identity variants by name (`nnUNetTrainerLesionDiffusion_r050_1a2b3c4d`), made on first use, so
    `nnUNetv2_train/predict -tr <name>` find them through the ext-trainer or shim module."""
    cls = identity.variant(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
