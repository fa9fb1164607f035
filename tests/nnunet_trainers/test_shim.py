"""install-shim writes a module nnU-Net imports, survives ld-augment's absence, and removes only its own file."""

from __future__ import annotations

import argparse
import sys

import pytest

from ld_augment.errors import ConfigError
from nnunet_trainers.cli import add_nnunet_parser
from nnunet_trainers.shim import SHIM_MODULE, install_shim, nnunet_variants_dir


def test_install_and_uninstall(tmp_path):
    path = install_shim(variants_dir=tmp_path)
    assert path == tmp_path / SHIM_MODULE and path.is_file()
    compile(path.read_text(), str(path), "exec")
    assert install_shim(variants_dir=tmp_path) == path          # idempotent
    install_shim(uninstall=True, variants_dir=tmp_path)
    assert not path.exists()
    install_shim(uninstall=True, variants_dir=tmp_path)         # nothing to remove is fine


def test_shim_survives_missing_package(tmp_path, monkeypatch):
    path = install_shim(variants_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "nnunet_trainers.trainer", None)   # import now raises ImportError
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert "nnUNetTrainerLesionDiffusion" not in namespace


def test_refuses_foreign_file(tmp_path):
    (tmp_path / SHIM_MODULE).write_text("print('someone else')\n")
    with pytest.raises(ConfigError, match="not written by ld-augment"):
        install_shim(variants_dir=tmp_path)
    with pytest.raises(ConfigError):
        install_shim(uninstall=True, variants_dir=tmp_path)


def test_missing_variants_dir(tmp_path):
    with pytest.raises(ConfigError, match="variants folder"):
        install_shim(variants_dir=tmp_path / "nope")


def test_default_target_is_inside_nnunetv2():
    folder = nnunet_variants_dir()
    assert folder.is_dir() and folder.parts[-3:] == ("training", "nnUNetTrainer", "variants")


def test_cli_parser():
    parser = argparse.ArgumentParser()
    add_nnunet_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["nnunet", "install-shim", "--uninstall"])
    assert args.uninstall and args.func.__name__ == "run_install_shim"
    assert parser.parse_args(["nnunet", "ext-dir"]).func.__name__ == "run_ext_dir"


def test_package_import_does_not_import_nnunet():
    import subprocess

    code = ("import sys, nnunet_trainers, nnunet_trainers.shim, nnunet_trainers.cli, nnunet_trainers.mixing, "
            "nnunet_trainers.config, synthesis_bank.prepare; "
            "sys.exit(1 if any(m.startswith('nnunetv2') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
