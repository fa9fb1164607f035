"""The conditioning text of the networks, derived from a report in exactly one place.

The original turns a report's attribute dict into the list of its values (one string per attribute, in the
dict's order) and encodes each string separately. What is in that dict depends on the network
(ARCHITECTURE.md section 3):

* ``"all"``: every attribute (training-time context), with "lesion location" given as the organ name;
* ``"lmnet"`` (mask network): drop size, CT value, density variations, density and an empty "specific
  features" -- a mask carries no intensity -- set "lesion location" to the organ name and add the cavity
  phrase *with its trailing comma* (training only ever saw "within the parenchymal organ," etc.);
* ``"linet"`` (inpainting network): drop size and set "lesion location" to the organ name.

"lesion location" holds a class id in the file, which means nothing to a text encoder; the networks see the
organ name instead. Texts are returned as stored (the encoder's tokenizer lower-cases).

Which cavity phrase LMNet reads (``cavity_text``):

* ``"released"`` -- what the paper's results used. The released test configuration points the organ map and
  the coarse organ map at one file, so the original's solid-organ rule always yields "protruding from the
  parenchymal organ,"; hollow organs get "wall thickening," ("within the lumen of a hollow organ," for stones).
* ``"report"`` -- the report's own cavity (the organ's default when it gives none), default for our own
  checkpoints, whose training texts come from the same reports.

Which CT-value text LINet reads (``ct_value_text``): ``"released"`` rewrites "... approximately 57 HU," to
"57.0 HU," as the original's training loader did (a plain or decimal number after "approximately"; any other
spelling stays verbatim), ``"report"`` keeps the report's sentence.
"""

from __future__ import annotations

import re
from typing import Literal

from ld_augment.errors import ConfigError
from ld_augment.organs.registry import CAVITY_LUMEN, CAVITY_PROTRUDING, CAVITY_WALL
from ld_augment.reports._organs import default_cavity, is_hollow, organ_name as _v1_organ_name
from ld_augment.reports.model import (
    CAVITY, CT_VALUE, DENSITY, DENSITY_VARIATIONS, LOCATION, SIZE, SPECIFIC_FEATURES, LesionReport,
)

Purpose = Literal["lmnet", "linet", "all"]
PURPOSES: tuple[str, ...] = ("lmnet", "linet", "all")

_LMNET_DROP = (SIZE, CT_VALUE, DENSITY_VARIATIONS, DENSITY)
CavityText = Literal["released", "report"]
CAVITY_TEXTS: tuple[str, ...] = ("released", "report")
CtValueText = Literal["released", "report"]
CT_VALUE_TEXTS: tuple[str, ...] = ("released", "report")
#: The original's CT-value pattern: "approximately <int or decimal> HU" (no sign other than "-", no exponent).
_RELEASED_CT = re.compile(r"approximately (-?\d+(?:\.\d+)?) HU")
#: Words that make a report describe a stone (the original keys this on the disease name, e.g. kidney_stone).
STONE_WORDS = ("stone", "calculus", "calculi")


def is_stone(report: LesionReport) -> bool:
    """Whether the report describes a stone (lumen cavity, smaller acceptance threshold in the original)."""
    text = " ".join([report.shape_text, *report.attributes.values()]).lower()
    return any(word in text for word in STONE_WORDS)


def with_comma(text: str) -> str:
    """A phrase as the original's training texts spell it: stripped, one trailing comma."""
    text = text.strip().rstrip(",").strip()
    return text + "," if text else text


def released_ct_value(text: str) -> str:
    """The CT-value text as the original's training loader rewrote it: "approximately 57 HU," -> "57.0 HU,"."""
    found = _RELEASED_CT.search(text)
    return f"{float(found.group(1))} HU," if found else text


def cavity_phrase(report: LesionReport, cavity_text: CavityText = "report", *, stone: bool | None = None,
                  hollow: bool | None = None) -> str:
    """The cavity phrase LMNet reads, with its trailing comma (see the module doc for the two modes).

    stone / hollow: whether the lesion is a stone and its organ hollow (the original's training loader read
    both from the organ / disease folder names, e.g. "gallbladder/gallstone"); None decides from the report.
    """
    if cavity_text not in CAVITY_TEXTS:
        raise ConfigError(f"unknown cavity_text {cavity_text!r}; valid: {', '.join(CAVITY_TEXTS)}")
    if cavity_text == "released":
        if is_hollow(report.organ_id) if hollow is None else hollow:
            stony = is_stone(report) if stone is None else stone
            return with_comma(CAVITY_LUMEN if stony else CAVITY_WALL)
        return with_comma(CAVITY_PROTRUDING)
    given = report.attributes.get(CAVITY, "")
    return with_comma(given if given.strip(" ,") else default_cavity(report.organ_id))


def conditioning_attributes(report: LesionReport, *, purpose: Purpose, organ_name: str | None = None,
                            cavity_text: CavityText = "report", ct_value_text: CtValueText = "report",
                            stone: bool | None = None, hollow: bool | None = None) -> dict[str, str]:
    """The attribute dict a network is conditioned on (keys kept so callers can log or inspect it).

    ``organ_name`` defaults to the v1 class name of ``report.organ_id``. For LMNet the cavity phrase follows
    ``cavity_text`` (a report without a cavity gets the organ registry's default in "report" mode); for
    LINet the CT value follows ``ct_value_text``.
    """
    if purpose not in PURPOSES:
        raise ConfigError(f"unknown conditioning purpose {purpose!r}; valid: {', '.join(PURPOSES)}")
    if ct_value_text not in CT_VALUE_TEXTS:
        raise ConfigError(f"unknown ct_value_text {ct_value_text!r}; valid: {', '.join(CT_VALUE_TEXTS)}")
    name = organ_name if organ_name is not None else _v1_organ_name(report.organ_id)
    attrs = dict(report.attributes)
    if LOCATION in attrs or purpose != "all":
        attrs[LOCATION] = name
    if purpose == "linet":
        attrs.pop(SIZE, None)
        if ct_value_text == "released" and CT_VALUE in attrs:
            attrs[CT_VALUE] = released_ct_value(attrs[CT_VALUE])
    elif purpose == "lmnet":
        for key in _LMNET_DROP:
            attrs.pop(key, None)
        if SPECIFIC_FEATURES in attrs and not attrs[SPECIFIC_FEATURES].strip(" ,"):
            del attrs[SPECIFIC_FEATURES]
        attrs[CAVITY] = cavity_phrase(report, cavity_text, stone=stone, hollow=hollow)
    return attrs


def conditioning_texts(report: LesionReport, *, purpose: Purpose, organ_name: str | None = None,
                       cavity_text: CavityText = "report", ct_value_text: CtValueText = "report",
                       stone: bool | None = None, hollow: bool | None = None) -> list[str]:
    """The ordered attribute strings the text encoder embeds (one vector per string)."""
    return list(conditioning_attributes(report, purpose=purpose, organ_name=organ_name, cavity_text=cavity_text,
                                        ct_value_text=ct_value_text, stone=stone, hollow=hollow).values())
