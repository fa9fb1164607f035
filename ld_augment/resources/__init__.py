"""Run-time data shipped inside the package: vocabulary, class maps, BiomedCLIP tokenizer/config, example CT."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

RESOURCES_DIR = Path(__file__).resolve().parent


def resource_path(*parts: str) -> Path:
    """Path of a packaged resource file, e.g. resource_path("vocab", "attribute_vocabulary.json")."""
    path = RESOURCES_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"packaged resource {path} is missing; reinstall ld-augment")
    return path


@lru_cache(maxsize=None)
def load_json_resource(*parts: str) -> Any:
    """Parsed JSON of a packaged resource (cached: these files never change at run time)."""
    with open(resource_path(*parts), encoding="utf-8") as fh:
        return json.load(fh)


def biomedclip_dir() -> Path:
    """Folder with the BiomedCLIP text-tower config and tokenizer (no weights)."""
    return resource_path("biomedclip")


def example_ct() -> Path:
    """The bundled example CT (3 mm abdominal crop, Apache-2.0, see resources/example/NOTICE)."""
    return resource_path("example", "abdomen_ct_3mm_crop.nii.gz")


def example_segmentation() -> Path:
    """TotalSegmentator v2 segmentation of the bundled example CT."""
    return resource_path("example", "abdomen_ct_3mm_crop_totalseg_v2.nii.gz")
