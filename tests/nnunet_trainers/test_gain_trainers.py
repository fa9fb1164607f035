"""The gain benchmark's trainer: found by nnU-Net through the ext-trainer folder; seeding repeats draws."""

from __future__ import annotations

import random

import numpy as np
import torch

from nnunet_trainers.shim import ext_trainer_dir


def test_ldbench_found_through_nnUNet_extTrainer(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_trainers.gain.trainers import nnUNetTrainerLDBench
    from nnunet_trainers.trainer import nnUNetTrainerLesionDiffusion

    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_dir()))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerLDBench")
    assert cls is nnUNetTrainerLDBench and issubclass(cls, nnUNetTrainerLesionDiffusion)


def test_seed_everything_repeats_every_rng_nnunet_draws_from():
    from nnunet_trainers.gain.trainers import seed_everything

    def draws():
        return random.random(), np.random.randint(1 << 30), float(torch.rand(1))
    seed_everything(3)
    a = draws()
    seed_everything(3)
    assert draws() == a
    seed_everything(4)
    assert draws() != a
