"""Fixtures for the nets tests: the tiny reference instances and the released-size layout JSONs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch


@pytest.fixture(scope="session")
def load_tiny(reference_data: Path) -> Callable[[str], dict[str, Any]]:
    """name -> {"config": config.json, "state_dict": ..., , "inputs": ..., "outputs": ...}."""
    cache: dict[str, dict[str, Any]] = {}

    def load(name: str) -> dict[str, Any]:
        if name not in cache:
            root = reference_data / "tiny" / name
            cache[name] = {
                "config": json.loads((root / "config.json").read_text()),
                **{part: torch.load(root / f"{part}.pt", weights_only=True)
                   for part in ("state_dict", "inputs", "outputs")},
            }
        return cache[name]

    return load


@pytest.fixture(scope="session")
def load_layout(reference_data: Path) -> Callable[[str], dict[str, Any]]:
    def load(name: str) -> dict[str, Any]:
        return json.loads((reference_data / "layouts" / f"{name}.json").read_text())

    return load

