"""Issue 22: a checkpoint is memory-mapped or refused when it would not fit the memory budget, and the pickle
refusal names the command-line flag a user can actually type."""

from __future__ import annotations

import argparse
import tracemalloc

import pytest
import torch

from ld_augment.errors import CheckpointError
from ld_augment.nets.checkpoints import read_torch_file
from ld_augment.settings import MAX_MEMORY_ENV


def test_legacy_checkpoint_over_the_memory_budget_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(512, 1024)}, path, _use_new_zipfile_serialization=False)  # 2 MB, not mappable
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.001")
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=f"over the limit of 0.0 GB \\({MAX_MEMORY_ENV}\\)"):
            read_torch_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    monkeypatch.delenv(MAX_MEMORY_ENV)
    assert read_torch_file(path)["w"].shape == (512, 1024)


def test_zip_checkpoint_is_memory_mapped_whatever_its_size(tmp_path, monkeypatch):
    path = tmp_path / "zip.pt"
    torch.save({"w": torch.zeros(512, 1024)}, path)
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.001")
    assert read_torch_file(path)["w"].shape == (512, 1024)


def test_pickle_refusal_names_the_cli_flag(tmp_path):
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hparams": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError) as err:
        read_torch_file(path)
    assert "--allow-pickle" in str(err.value) and "\n" not in str(err.value)
