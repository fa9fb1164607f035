"""Fixtures of the evaluation tests: fabricated labelled datasets (see fake_datasets.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import pytest


def load_fakes():
    spec = importlib.util.spec_from_file_location("ld_eval_fake_datasets", Path(__file__).with_name("fake_datasets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    fakes = load_fakes()

    def factory(name: str, **kwargs) -> Path:
        return fakes.make_dataset(tmp_path / name, **kwargs)

    return factory
