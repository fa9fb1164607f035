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


def test_list_file_data_tensorboard_and_png_samples(cases_dir: Path, tmp_path: Path, capsys) -> None:
    """The original's list files as --data; TensorBoard scalars and PNG samples of the fixed crop (rank 0)."""
    rows = sorted(cases_dir.iterdir())
    for infix, name in {"img": "ct.nii.gz", "label": "label.nii.gz", "type": "report.json",
                        "seg": "totalseg.nii.gz"}.items():
        (tmp_path / f"train_{infix}_list.txt").write_text("".join(f"{r / name}\n" for r in rows))
    out = tmp_path / "o"
    args = _parse(["train", "lmnet", "--data", str(tmp_path), "--out", str(out), "--config", "tiny", "--steps", "2",
                   "--crop", "8x16x16", "--no-progress", "--tensorboard", "--sample-every", "2", "--warmup-steps",
                   "4", "--grad-clip", "1.0", "--sampling", "sequential"])
    assert args.func(args) == 0
    _, _, meta = load_checkpoint(out / "lmnet.pt")
    assert meta["extra"]["training"]["cases"] == [r.name for r in rows]  # repeated file names: folder ids
    assert meta["extra"]["training"]["warmup_steps"] == 4 and meta["extra"]["training"]["world_size"] == 1
    assert list((out / "tensorboard" / "lmnet").glob("events.out.tfevents.*"))
    png = out / "samples" / "lmnet_step0000002.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "lmnet"))
    acc.Reload()
    assert {"lmnet/loss", "lmnet/lr", "lmnet/grad_norm", "lmnet/samples_per_s"} <= set(acc.Tags()["scalars"])


def test_recipe_option_sets_the_released_lr_and_records_it(cases_dir: Path, tmp_path: Path) -> None:
    """--recipe released without --lr: the original's LMNet 2e-5 x 1 process x batch 2; ours stays 1e-4."""
    assert _parse(["train", "lmnet", "--data", "d", "--out", "o"]).recipe == "auto"
    args = _parse(["train", "lmnet", "--data", str(cases_dir), "--out", str(tmp_path / "r"), "--config", "tiny",
                   "--steps", "1", "--crop", "8x16x16", "--batch-size", "2", "--recipe", "released", "--no-progress"])
    assert args.lr is None and args.func(args) == 0
    training = load_checkpoint(tmp_path / "r" / "lmnet.pt")[2]["extra"]["training"]
    assert training["lr"] == pytest.approx(4e-5) and training["recipe"]["name"] == "released"
    assert training["spacing"] is None and training["optimizer"] == "adamw"  # native spacing, as the original
    args = _parse(["train", "lmnet", "--data", str(cases_dir), "--out", str(tmp_path / "o"), "--config", "tiny",
                   "--steps", "1", "--crop", "8x16x16", "--no-progress"])
    assert args.func(args) == 0
    training = load_checkpoint(tmp_path / "o" / "lmnet.pt")[2]["extra"]["training"]
    assert training["lr"] == pytest.approx(1e-4) and training["recipe"]["name"] == "ours"
    with pytest.raises(SystemExit):
        _parse(["train", "lmnet", "--data", "d", "--out", "o", "--recipe", "paper"])
