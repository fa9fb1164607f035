"""Reading an nnU-Net raw dataset's (or a bank's) dataset.json, with errors that name the file.

One reader for every tool that takes a dataset folder from the user (compare, calibration, expand_dataset, the
gain benchmark), so a missing, garbled or label-less file reads the same everywhere: exit 2, one line, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ld_augment.errors import InputError


def read_dataset_json(path: str | Path, *, expected: str = "an nnU-Net raw dataset") -> dict[str, Any]:
    """dataset.json at `path` as a dict with a non-empty "labels" mapping, else InputError naming the file;
    `expected` says what the folder should have been (in the "not found" message)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found; expected {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: no 'labels' mapping")
    return data
