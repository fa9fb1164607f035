"""The trainer class against the installed nnU-Net: overridden signatures, variants, lookup by name."""

from __future__ import annotations

import inspect

import pytest

from nnunet_trainers.shim import ext_trainer_dir

trainer_mod = pytest.importorskip("nnunet_trainers.trainer")
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

Base = trainer_mod.nnUNetTrainerLesionDiffusion


def _shape(fn) -> list[tuple]:
    """Names, kinds and defaults: what callers rely on (annotations are strings on our side)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(n for n, v in vars(Base).items()
                                        if callable(v) and hasattr(nnUNetTrainer, n) and n != "__new__"))
def test_overridden_signatures_match_parent(name):
    # Fails on an nnU-Net upgrade that changes a hook we override: re-check the override, then update.
    assert _shape(getattr(Base, name)) == _shape(getattr(nnUNetTrainer, name)), name


def test_overrides_stay_few():
    overridden = {n for n, v in vars(Base).items() if callable(v) and hasattr(nnUNetTrainer, n)}
    assert overridden == {"__new__", "__init__", "get_tr_and_val_datasets", "get_dataloaders", "train_step",
                          "on_train_epoch_end"}
    assert "get_training_transforms" not in vars(Base)


def test_variants_set_one_thing():
    assert trainer_mod.nnUNetTrainerLesionDiffusion_ratio25.bank_ratio == 0.25
    assert trainer_mod.nnUNetTrainerLesionDiffusion_ratio75.bank_ratio == 0.75
    for name in ("nnUNetTrainerLesionDiffusion_ratio25", "nnUNetTrainerLesionDiffusion_ratio75"):
        assert set(vars(getattr(trainer_mod, name))) - {"__module__", "__doc__", "__qualname__"} == {"bank_ratio"}
    short = trainer_mod.nnUNetTrainerLesionDiffusion_5iters
    assert short.ld_num_epochs * short.ld_iterations_per_epoch <= 20
    for n in trainer_mod.EPOCH_VARIANTS:
        cls = getattr(trainer_mod, f"nnUNetTrainerLesionDiffusion_{n}epochs")
        assert cls.ld_num_epochs == n and issubclass(cls, Base) and cls.__module__ == trainer_mod.__name__


def test_ext_trainer_dir_holds_only_the_shim():
    files = sorted(p.name for p in ext_trainer_dir().iterdir() if p.name != "__pycache__")
    assert files == ["ld_augment_trainers.py"]


def test_found_through_nnUNet_extTrainer(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_dir()))
    for name in ("nnUNetTrainerLesionDiffusion", "nnUNetTrainerLesionDiffusion_ratio25"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(trainer_mod, name)


def test_realized_fraction_is_summed_over_ddp_ranks(monkeypatch):
    """Under DDP each rank counts its own batches; the logged fraction must use the all-reduced totals."""
    import types

    import torch
    import torch.distributed as dist

    def fake_all_reduce(tensor):          # stands in for 3 more ranks that drew the same as this one
        tensor.mul_(4)

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    rank = types.SimpleNamespace(_drawn_synthetic=3, _drawn_total=8, is_ddp=True, device=torch.device("cpu"))
    assert Base._global_counts(rank) == (12, 32)
    rank.is_ddp = False
    assert Base._global_counts(rank) == (3, 8)


def test_run_identity_variants_by_name(monkeypatch):
    """`-tr nnUNetTrainerLesionDiffusion_r050_<bank>` is found by nnU-Net's lookup and carries ratio and bank."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_dir()))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerLesionDiffusion_r050_1a2b3c4d")
    assert issubclass(cls, Base) and (cls.bank_ratio, cls.ld_bank_tag, cls.ld_run_identity) == (0.5, "1a2b3c4d", True)
    assert cls is getattr(trainer_mod, "nnUNetTrainerLesionDiffusion_r050_1a2b3c4d")          # made once
    short = getattr(trainer_mod, "nnUNetTrainerLesionDiffusion_5iters_r33p33_00ff00ff")
    assert issubclass(short, trainer_mod.nnUNetTrainerLesionDiffusion_5iters) and short.bank_ratio == 0.3333
    real_only = getattr(trainer_mod, "nnUNetTrainerLesionDiffusion_r000")
    assert real_only.bank_ratio == 0.0 and real_only.ld_bank_tag is None
    for bad in ("nnUNetTrainerLesionDiffusion_r050", "nnUNetTrainerLesionDiffusion_r000_1a2b3c4d",
                "nnUNetTrainerLesionDiffusion_r150_1a2b3c4d", "nnUNetTrainer_r050_1a2b3c4d",
                "nnUNetTrainerLesionDiffusion_r050_1a2b3c4d_r050_1a2b3c4d", "nnUNetTrainerLesionDiffusionX"):
        assert not hasattr(trainer_mod, bad), bad


def test_ratio_tags_round_trip():
    from nnunet_trainers.identity import parse_ratio_tag, ratio_tag

    for ratio, tag in ((0.5, "r050"), (0.25, "r025"), (1.0, "r100"), (0.0, "r000"), (0.3333, "r33p33"),
                       (0.125, "r12p5")):
        assert ratio_tag(ratio) == tag and parse_ratio_tag(tag[1:]) == ratio


def test_run_name_cli(tmp_path, capsys):
    import argparse

    from nnunet_fixtures import make_bank
    from nnunet_trainers.cli import add_nnunet_parser
    from nnunet_trainers.identity import bank_tag

    bank = make_bank(tmp_path / "bank", ["a"], shape=(8, 8, 8))
    parser = argparse.ArgumentParser()
    add_nnunet_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["nnunet", "run-name", "--bank", str(bank), "--ratio", "0.25",
                              "--trainer", "nnUNetTrainerLesionDiffusion_5iters"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"nnUNetTrainerLesionDiffusion_5iters_r025_{bank_tag(bank)}"
