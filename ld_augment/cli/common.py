"""Small argument helpers shared by the subcommands (parsing), and the command boundary that turns errors into
one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from ld_augment.errors import ConfigError, LdAugmentError, describe_os_error
from ld_augment.io.textfile import MAX_LIST_BYTES, read_text_bounded

EXIT_ERROR = 2
log = logging.getLogger("ld_augment.cli")


def run_command(func: Callable[[], int], prog: str, *, verbose: bool = False) -> int:
    """The command boundary: the job's exit code, or 2 with ONE line on stderr for every expected error (ours,
    and OS/IO errors such as a full or read-only disk). With `verbose` the traceback also goes to the log."""
    try:
        return int(func() or 0)
    except (LdAugmentError, OSError) as exc:
        message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        kind = type(exc).__name__  # ``exc`` is unbound after the except block
        if verbose:
            log.info("traceback of the error below:", exc_info=exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is kept", file=sys.stderr)
        return 130
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    print(f"{prog}: error: {'; '.join(lines) or kind}", file=sys.stderr)  # the promise: one line
    return EXIT_ERROR


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
        raw = read_text_bounded(path, what=what) if path.is_file() else text
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: neither a JSON file nor inline JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def engine_options_arg(text: str | None, *, allow_pickle: bool, engines: dict[str, str]) -> dict | None:
    """--engine-options (inline JSON or a file) for {"mask": {...}, "texture": {...}}.

    `allow_pickle` inside it is refused: an options file is shared like a recipe, and the option lets a
    checkpoint run code. Only the person typing the command enables it, with --allow-pickle; it then goes to
    every named non-procedural engine (`engines` = role -> engine name).
    """
    options = parse_json_arg(text, "--engine-options") if text else {}
    for role, opts in options.items():
        if isinstance(opts, dict) and "allow_pickle" in opts:
            raise ConfigError(f"--engine-options: '{role}.allow_pickle' is not accepted in an options file or JSON "
                              "(it lets a checkpoint run code); pass --allow-pickle on the command line instead")
    if allow_pickle:
        for role, name in engines.items():
            if name != "procedural":
                options.setdefault(role, {})["allow_pickle"] = True
    return options or None


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in low..high (no upper bound when high is None), refused at parse time."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def parse_num_lesions(text: str) -> int:
    """--num-lesions: 1..MAX_LESIONS_PER_CASE (refused at parse time, not after hours of placement)."""
    from ld_augment.pipeline.preprocess import MAX_LESIONS_PER_CASE

    return int_in_range(1, MAX_LESIONS_PER_CASE)(text)


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
    text = read_text_bounded(path, what="list file", limit=MAX_LIST_BYTES)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
