"""`ld-augment train`: the parser calls the training functions by keyword; option errors are readable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ld_augment.cli import train_cmd
from ld_augment.errors import ConfigError
from ld_augment.nets import LMNET_TINY, load_checkpoint


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ld-augment")
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_train_lmnet_from_the_command_line(cases_dir: Path, tmp_path: Path, capsys) -> None:
    args = _parse(["train", "lmnet", "--data", str(cases_dir), "--out", str(tmp_path / "o"), "--config", "tiny",
                   "--steps", "2", "--crop", "8x16x16", "--lr", "1e-3", "--seed", "3", "--no-progress"])
    assert args.func(args) == 0
    _, cfg, meta = load_checkpoint(tmp_path / "o" / "lmnet.pt")
    assert cfg == LMNET_TINY and meta["extra"]["training"]["seed"] == 3
    assert "final weights" in capsys.readouterr().out


def test_parser_defaults_and_errors(cases_dir: Path, tmp_path: Path) -> None:
    args = _parse(["train", "linet", "--data", "d", "--out", "o"])
    assert args.resume and args.steps == 1000 and args.batch_size == 1 and args.crop is None
    assert not _parse(["train", "vq", "--data", "d", "--out", "o", "--no-resume"]).resume
    with pytest.raises(SystemExit):
        _parse(["train", "lmnet", "--data", "d", "--out", "o", "--crop", "8x16"])
    args = _parse(["train", "lmnet", "--data", str(cases_dir), "--out", str(tmp_path), "--vq", "vq.pt"])
    with pytest.raises(ConfigError, match="--vq/--vq-config are for train linet"):
        args.func(args)
    args = _parse(["train", "vq", "--data", str(cases_dir), "--out", str(tmp_path), "--encoder", "vocab"])
    with pytest.raises(ConfigError, match="no --encoder"):
        args.func(args)
