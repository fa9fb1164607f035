"""Run identity: the bank and the ratio are part of the trainer's name, hence of nnU-Net's results folder.

nnU-Net names a run `<trainer class>__<plans>__<configuration>`. With the bank and ratio only in environment
variables, two ratios would share (and overwrite) one folder. So every run of a bank trainer is a run of a
*variant* whose class name ends in `_r<ratio>_<bank tag>`:

    nnUNetTrainerLesionDiffusion_r050_1a2b3c4d     ratio 0.50, bank whose manifest sha256 starts 1a2b3c4d
    nnUNetTrainerLesionDiffusion_5iters_r025_...   the same for any of our variants (or a subclass of ours)
    nnUNetTrainerLesionDiffusion_r000              ratio 0: real cases only, no bank

The ratio tag is the percentage, three digits when whole (`r050`), else with `p` for the point (`r33p33`,
two decimals at most). Variants are made on demand: `nnUNetv2_train ... -tr <name>` and `nnUNetv2_predict -tr
<name>` find them through the module `__getattr__` of `nnunet_trainers.trainer` (hence of the shim modules),
and a plain `-tr nnUNetTrainerLesionDiffusion` with LD_BANK_DIR/LD_BANK_RATIO becomes that variant when it is
instantiated (`__new__`), so the folder carries ratio and bank either way and `--c` finds its own run.
"""

from __future__ import annotations

import re
from pathlib import Path

from ld_augment.errors import ConfigError

TAG_RE = re.compile(r"^(?P<base>\w+?)_r(?P<ratio>\d{3}|\d{1,3}p\d{1,2})(?:_(?P<bank>[0-9a-f]{8}))?$")


def ratio_tag(ratio: float) -> str:
    """0.5 -> 'r050', 0.3333 -> 'r33p33' (percent, at most two decimals)."""
    percent = round(float(ratio) * 100, 2)
    if not 0 <= percent <= 100:
        raise ConfigError(f"bank ratio {ratio} is outside [0, 1]")
    if percent == int(percent):
        return f"r{int(percent):03d}"
    return "r" + f"{percent:.2f}".rstrip("0").replace(".", "p")


def parse_ratio_tag(tag: str) -> float:
    return round(float(tag.replace("p", ".")) / 100, 4)


def bank_tag(bank_dir: str | Path) -> str:
    """The first 8 hex digits of the bank manifest's sha256: a rebuilt or grown bank is another bank."""
    from synthesis_bank.nnunet_io import manifest_sha256

    return manifest_sha256(bank_dir)[:8]


def run_name(base: str, ratio: float, bank_dir: str | Path | None) -> str:
    """The variant name of a run of trainer `base` with this ratio and bank."""
    suffix = ratio_tag(ratio)
    if ratio > 0:
        if bank_dir is None:
            raise ConfigError("a bank ratio above 0 needs a bank (LD_BANK_DIR or --bank)")
        suffix += "_" + bank_tag(bank_dir)
    return f"{base}_{suffix}"


def parse_run_name(name: str) -> tuple[str, float, str | None] | None:
    """(base trainer name, ratio, bank tag or None) of a variant name, else None."""
    m = TAG_RE.match(name)
    if m is None:
        return None
    ratio = parse_ratio_tag(m.group("ratio"))
    if (ratio > 0) != (m.group("bank") is not None) or ratio > 1:
        return None
    return m.group("base"), ratio, m.group("bank")


def _find_base(name: str) -> type | None:
    from nnunet_trainers import trainer as ours

    cls = ours.__dict__.get(name)
    if cls is None:
        try:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            cls = recursive_find_trainer_class_by_name(name)
        except Exception:  # noqa: BLE001 - nnU-Net raises RuntimeError for unknown names
            return None
    return cls if isinstance(cls, type) and issubclass(cls, ours.nnUNetTrainerLesionDiffusion) else None


_MADE: dict[str, type] = {}


def variant(name: str, base: type | None = None) -> type | None:
    """The identity variant class called `name` (made once per process), or None if `name` is not one."""
    if name in _MADE:
        return _MADE[name]
    parsed = parse_run_name(name)
    if parsed is None:
        return None
    base_name, ratio, tag = parsed
    base = base if base is not None else _find_base(base_name)
    if base is None or base.__name__ != base_name or getattr(base, "ld_run_identity", False):
        return None
    cls = type(name, (base,), {"bank_ratio": ratio, "ld_bank_tag": tag, "ld_run_identity": True,
                               "__module__": "nnunet_trainers.trainer",
                               "__doc__": f"{base_name} at bank ratio {ratio}"
                                          + (f" with the bank whose manifest sha256 starts {tag}" if tag else "")})
    _MADE[name] = cls
    return cls
