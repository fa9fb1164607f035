"""The trainer's settings, read from the environment when training starts (`nnUNetv2_train` passes no extras).

LD_BANK_DIR    the bank folder, prepared for the target (`synthesis-bank prepare --bank DIR --target DATASET`)
LD_BANK_RATIO  probability that a training sample comes from the bank (default 0.5; a ratio variant's own
               value wins over it)
LD_BANK_ALLOW_CHANGE=1  lets `nnUNetv2_train --c` continue with another bank, manifest or ratio than the
               interrupted run used (the change is recorded); without it such a continuation is refused
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ld_augment.errors import ConfigError

ENV_BANK_DIR = "LD_BANK_DIR"
ENV_BANK_RATIO = "LD_BANK_RATIO"
ENV_ALLOW_CHANGE = "LD_BANK_ALLOW_CHANGE"
DEFAULT_RATIO = 0.5


@dataclass(frozen=True)
class BankSettings:
    bank_dir: Path | None   # None only when ratio == 0 (real-only training needs no bank)
    ratio: float
    ratio_source: str       # "variant", "LD_BANK_RATIO" or "default": logged so runs explain themselves


def parse_ratio(value: str | float, origin: str) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}={value!r} is not a number; use a bank ratio in [0, 1], e.g. 0.5") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"{origin}={value!r} is outside [0, 1]; it is the probability of drawing a bank sample")
    return ratio


def read_bank_settings(variant_ratio: float | None = None, *, configuration: str = "3d_fullres",
                       target: str = "DATASET") -> BankSettings:
    """Resolve bank folder and ratio. A missing bank is a ConfigError naming the variable and the fix."""
    env_ratio = os.environ.get(ENV_BANK_RATIO)
    if variant_ratio is not None:
        ratio, source = parse_ratio(variant_ratio, "variant bank_ratio"), "variant"
    elif env_ratio not in (None, ""):
        ratio, source = parse_ratio(env_ratio, ENV_BANK_RATIO), ENV_BANK_RATIO
    else:
        ratio, source = DEFAULT_RATIO, "default"
    value = os.environ.get(ENV_BANK_DIR, "")
    if not value:
        if ratio == 0.0:
            return BankSettings(None, ratio, source)
        raise ConfigError(f"{ENV_BANK_DIR} is not set: point it at a bank folder prepared for this dataset, "
                          f"e.g. `synthesis-bank prepare --bank BANK --target {target} -c {configuration}` then "
                          f"`export {ENV_BANK_DIR}=BANK` (or train with ratio 0: {ENV_BANK_RATIO}=0)")
    bank = Path(value).expanduser().resolve()
    if not bank.is_dir():
        raise ConfigError(f"{ENV_BANK_DIR}={value}: no such folder; build a bank with `synthesis-bank build` "
                          f"and prepare it with `synthesis-bank prepare --bank {value} --target {target}`")
    return BankSettings(bank, ratio, source)


def allow_change() -> bool:
    """True when LD_BANK_ALLOW_CHANGE is set to 1/true/yes (anything else, including unset, is False)."""
    return os.environ.get(ENV_ALLOW_CHANGE, "").strip().lower() in ("1", "true", "yes")
