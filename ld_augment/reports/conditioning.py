"""The conditioning text of the networks, derived from a report in exactly one place.

The original turns a report's attribute dict into the list of its values (one string per attribute, in the
dict's order) and encodes each string separately. What is in that dict depends on the network
(ARCHITECTURE.md section 3):

* ``"all"``: every attribute (training-time context), with "lesion location" given as the organ name;
* ``"lmnet"`` (mask network): drop size, CT value, density variations, density and an empty "specific
  features" -- a mask carries no intensity -- set "lesion location" to the organ name and add the cavity;
* ``"linet"`` (inpainting network): drop size and set "lesion location" to the organ name.

"lesion location" holds a class id in the file, which means nothing to a text encoder; the networks see the
organ name instead. Texts are returned as stored (the encoder's tokenizer lower-cases).
"""

from __future__ import annotations

from typing import Literal

from ld_augment.errors import ConfigError
from ld_augment.reports._organs import default_cavity, organ_name as _v1_organ_name
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, DENSITY_VARIATIONS, LOCATION, SIZE, SPECIFIC_FEATURES, LesionReport,
)

Purpose = Literal["lmnet", "linet", "all"]
PURPOSES: tuple[str, ...] = ("lmnet", "linet", "all")

_LMNET_DROP = (SIZE, CT_VALUE, DENSITY_VARIATIONS, DENSITY)


def conditioning_attributes(report: LesionReport, *, purpose: Purpose, organ_name: str | None = None) -> dict[str, str]:
    """The attribute dict a network is conditioned on (keys kept so callers can log or inspect it).

    ``organ_name`` defaults to the v1 class name of ``report.organ_id``. For LMNet a report without a cavity
    gets the organ registry's default (the one placement assumes too).
    """
    if purpose not in PURPOSES:
        raise ConfigError(f"unknown conditioning purpose {purpose!r}; valid: {', '.join(PURPOSES)}")
    name = organ_name if organ_name is not None else _v1_organ_name(report.organ_id)
    attrs = dict(report.attributes)
    if LOCATION in attrs or purpose != "all":
        attrs[LOCATION] = name
    if purpose == "linet":
        attrs.pop(SIZE, None)
    elif purpose == "lmnet":
        for key in _LMNET_DROP:
            attrs.pop(key, None)
        if SPECIFIC_FEATURES in attrs and not attrs[SPECIFIC_FEATURES].strip(" ,"):
            del attrs[SPECIFIC_FEATURES]
        if not attrs.get(CAVITY, "").strip(" ,"):
            attrs[CAVITY] = default_cavity(report.organ_id)
    return attrs


def conditioning_texts(report: LesionReport, *, purpose: Purpose, organ_name: str | None = None) -> list[str]:
    """The ordered attribute strings the text encoder embeds (one vector per string)."""
    return list(conditioning_attributes(report, purpose=purpose, organ_name=organ_name).values())
