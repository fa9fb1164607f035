"""Where nnU-Net can find the trainers: the ext-trainer folder, or a shim module installed inside nnunetv2.

Two routes, because setups differ: `nnUNet_extTrainer=<ext_trainer_dir()>` needs no write access to
site-packages; `install_shim()` writes `nnunetv2/training/nnUNetTrainer/variants/ld_augment_shim.py` for setups
that cannot set the variable (clusters, containers). The installed module imports our trainers inside
try/except ImportError, so uninstalling ld-augment later leaves every other nnU-Net trainer working.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ld_augment.errors import ConfigError, MissingDependencyError
from ld_augment.io.atomic import atomic_write_text

SHIM_MODULE = "ld_augment_shim.py"
SHIM_MARKER = "# ld-augment shim"
SHIM_SOURCE = f'''{SHIM_MARKER}: written by `ld-augment nnunet install-shim`; remove with `--uninstall`.
"""Makes nnUNetTrainerLesionDiffusion (package ld-augment) visible to nnU-Net's trainer lookup."""
try:
    from nnunet_trainers.trainer import *  # noqa: F401,F403
    from nnunet_trainers.trainer import __getattr__  # noqa: F401  run-identity variants by name
except ImportError:  # ld-augment uninstalled: keep every other trainer working
    pass
'''


def ext_trainer_dir() -> Path:
    """The folder to put in `nnUNet_extTrainer` (it holds only the shim module `ld_augment_trainers.py`)."""
    return Path(__file__).resolve().parent / "ext_trainer_dir"


def nnunet_variants_dir() -> Path:
    """nnunetv2's `training/nnUNetTrainer/variants` folder, found without importing nnunetv2 (no torch import)."""
    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("nnunetv2 is not installed: pip install 'nnunetv2>=2.8,<2.9'")
    return Path(list(spec.submodule_search_locations)[0]) / "training" / "nnUNetTrainer" / "variants"


def install_shim(*, uninstall: bool = False, variants_dir: str | Path | None = None) -> Path:
    """Write (or with `uninstall=True` remove) the shim module; returns its path. Refuses foreign files."""
    folder = Path(variants_dir) if variants_dir is not None else nnunet_variants_dir()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: nnU-Net trainer variants folder not found (is nnunetv2 >= 2.8 installed?)")
    target = folder / SHIM_MODULE
    if target.exists() and not target.read_text(encoding="utf-8").startswith(SHIM_MARKER):
        raise ConfigError(f"{target} exists and was not written by ld-augment; remove it by hand first")
    if uninstall:
        if target.exists():
            target.unlink()
        return target
    atomic_write_text(target, SHIM_SOURCE)
    return target
