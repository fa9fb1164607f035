"""Synthesis bank: build an nnU-Net v2 raw dataset of synthetic lesion cases from a recipe.

Public API: `load_recipe`, `Recipe`, `build_bank`, `BuildSummary`, `merge_bank` (locked and count-checked like
`synthesis-bank merge`; `merge_manifests` is its unlocked inner step), `merge_manifests`, `read_manifest`,
`plan_build`. Imported lazily so `import synthesis_bank` (e.g. by the nnU-Net trainer) stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Recipe": "synthesis_bank.recipe",
    "load_recipe": "synthesis_bank.recipe",
    "build_bank": "synthesis_bank.builder",
    "BuildSummary": "synthesis_bank.builder",
    "merge_bank": "synthesis_bank.merge",
    "merge_manifests": "synthesis_bank.manifest",
    "read_manifest": "synthesis_bank.manifest",
    "plan_build": "synthesis_bank.plan",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synthesis_bank' has no attribute {name!r}")
