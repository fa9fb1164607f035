"""The stage order is the architecture: a module imports only earlier stages (see DEVELOPERS.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["io", "organs", "reports", "placement", "nets", "diffusion", "text", "engines", "pipeline", "training",
         "evaluation", "cli"]
# Stages that sit side by side and must not import each other.
SIBLINGS = {frozenset({"nets", "diffusion"})}
FREE = {"errors", "settings", "resources", "__init__"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ld_augment" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("path", sorted((ROOT / "ld_augment").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_earlier_stages(path: Path) -> None:
    rel = path.relative_to(ROOT / "ld_augment").parts
    own = rel[0].removesuffix(".py")
    if own in FREE or own not in ORDER:
        return
    for module in _imports(path):
        assert not module.startswith("nnunetv2"), f"{path}: ld_augment must not import nnunetv2 ({module})"
        stage = _stage_of(module)
        if stage is None or stage in FREE or stage == own:
            continue
        assert stage in ORDER, f"{path}: imports unknown stage {module}"
        assert frozenset({own, stage}) not in SIBLINGS, f"{path}: {own} must not import {stage}"
        assert ORDER.index(stage) < ORDER.index(own), f"{path}: stage {own} imports later stage {module}"
