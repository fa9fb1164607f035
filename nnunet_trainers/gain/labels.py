"""Which labels are the lesion, checked against dataset.json before anything trains.

`--lesion-label` accepts a label name of dataset.json (`cancer`, or a region such as KiTS `masses` = [2, 3]), a
value (`2`) or a list of values (`2,3` or `[2, 3]`: a multi-label lesion, counted as one target). Without it,
the one label whose name says lesion (tumour, cancer, masses, ...) is taken; several such names are an error
that lists them, so the user picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ld_augment.errors import InputError
from ld_augment.io.dataset_json import read_dataset_json as read_json_file


@dataclass(frozen=True)
class LesionTarget:
    name: str                    # a dataset.json label name, or "lesion" for a value list
    values: tuple[int, ...]      # label values that are lesion voxels


def label_values(labels: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """{name: values} for every non-background label or region of dataset.json's `labels`."""
    out = {}
    for name, value in labels.items():
        if name == "background":
            continue
        vals = value if isinstance(value, (list, tuple)) else [value]
        out[name] = tuple(sorted(int(v) for v in vals))
    return out


def _all_values(labels: Mapping[str, object]) -> set[int]:
    return {v for vals in label_values(labels).values() for v in vals}


def resolve_lesion(labels: Mapping[str, object], spec: str | None, dataset_json: Path) -> LesionTarget:
    """The lesion target, or an InputError naming dataset.json, its labels and what to pass."""
    from synthesis_bank.label_mapping import is_lesion_name

    defs = label_values(labels)
    listing = ", ".join(f"{n}={list(v) if len(v) > 1 else v[0]}" for n, v in defs.items())
    if spec is None:
        names = [n for n in defs if is_lesion_name(n)]
        if len(names) != 1:
            what = "no label name says lesion" if not names else f"labels {names} all name a lesion"
            raise InputError(f"{dataset_json}: {what} (labels: {listing}); pass --lesion-label NAME or values, "
                             f"e.g. --lesion-label {names[0] if names else '2'}")
        return LesionTarget(names[0], defs[names[0]])
    spec = spec.strip()
    if spec in defs:
        return LesionTarget(spec, defs[spec])
    try:
        values = tuple(sorted(int(v) for v in spec.strip("[]()").replace(" ", "").split(",") if v))
    except ValueError:
        raise InputError(f"{dataset_json}: --lesion-label {spec!r} is neither a label name nor label values "
                         f"(labels: {listing})") from None
    unknown = sorted(set(values) - _all_values(labels))
    if not values or unknown or 0 in values:
        raise InputError(f"{dataset_json}: --lesion-label {spec!r}: values {unknown or list(values)} are not "
                         f"lesion label values of this dataset (labels: {listing})")
    named = [n for n, v in defs.items() if v == values]
    return LesionTarget(named[0] if named else "lesion", values)


def read_dataset_json(raw: Path) -> dict:
    return read_json_file(Path(raw) / "dataset.json", expected="the nnU-Net raw dataset the benchmark runs on")


def check_label_files(files: Iterable[Path], labels: Mapping[str, object], dataset_json: Path,
                      target: LesionTarget) -> int:
    """Every label file holds only values dataset.json declares; returns how many files hold the lesion."""
    import nibabel as nib

    allowed = _all_values(labels) | {0}
    ignore = labels.get("ignore")
    if ignore is not None and not isinstance(ignore, (list, tuple)):
        allowed.add(int(ignore))
    with_lesion = 0
    for f in files:
        values = set(np.unique(np.asarray(nib.load(str(f)).dataobj)).astype(int).tolist())
        extra = sorted(values - allowed)
        if extra:
            raise InputError(f"{f}: label values {extra} are not declared in {dataset_json} (labels: {dict(labels)})")
        with_lesion += bool(values & set(target.values))
    return with_lesion
