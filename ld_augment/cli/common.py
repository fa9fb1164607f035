"""Small argument helpers shared by the subcommands (parsing only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ld_augment.errors import ConfigError


def parse_attr(values: list[str] | None) -> dict[str, str]:
    """`--attr density=hypodense --attr "shape=round-like"` -> {"density": "hypodense", ...}."""
    attrs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--attr expects NAME=VALUE, got {item!r}")
        attrs[key.strip()] = value.strip()
    return attrs


def parse_json_arg(text: str, what: str) -> dict:
    """A JSON object given inline or as a path to a .json file."""
    path = Path(text)
    try:
        raw = path.read_text(encoding="utf-8") if path.is_file() else text
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: neither a JSON file nor inline JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_triple(text: str, cast: type, what: str, example: str) -> tuple:
    """'2', '1x1x3' or '1,1,3' -> a 3-tuple of `cast` values (one value is repeated on all axes)."""
    parts = [p for p in text.replace("x", ",").split(",") if p]
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{what} must be {cast.__name__} values, got {text!r}") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{what} must be 1 or 3 positive values (e.g. {example}), got {text!r}")
    return values


def parse_spacing(text: str) -> tuple[float, float, float]:
    return parse_triple(text, float, "spacing (mm)", "1x1x1")


def parse_crop(text: str) -> tuple[int, int, int]:
    return parse_triple(text, int, "crop size", "64x152x152")


def read_list_file(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a list file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"list file {p} not found")
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
