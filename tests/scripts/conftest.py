"""Loads the scripts as modules and shares the fabrication helpers of tests/nnunet_trainers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "nnunet_trainers"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"ld_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def expand_dataset_mod():
    return load_script("expand_dataset")


@pytest.fixture(scope="session")
def benchmark_gain_mod():
    return load_script("benchmark_gain")
