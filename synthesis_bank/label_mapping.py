"""Bank labels -> a target nnU-Net dataset's label space (what `synthesis-bank prepare` writes for training).

A bank labels every case `{background, organ, lesion}` (the recipe's scheme), while real lesion datasets name
their classes after the organ and the lesion (MSD Task03 `{background, liver, cancer}`) or use nnU-Net regions
(KiTS23 `{kidney: [1, 2, 3], masses: [2, 3], tumor: 2}`). The mapping is resolved per bank case from its
organ and lesion type (recorded in the manifest), in this order for each bank class:

* explicit `--labels` entries: by lesion type (`"renal cell carcinoma=tumor"`) or organ name (`liver=liver`)
  first, then by bank class (`organ=liver`, `lesion=cancer`); the target name `drop` means background;
* a target label with the bank class's own name (a target labelled `organ`/`lesion` maps one to one), or
  with the lesion type's own name (`cyst` -> a target label `cyst`);
* the organ by name: the organ's name or a synonym (`ld_augment.organs`; `kidney` covers kidney_left);
* a lesion only by meaning, never across meanings: a malignant type (hepatocellular carcinoma, renal cell
  carcinoma, metastasis, adenocarcinoma, ...) goes to the target's one tumour label (tumor/cancer/carcinoma/...;
  KiTS `masses` is not one); a benign type (cyst, hemangioma, ...) or an unknown one only with the user's word
  (`--lesion-map cyst=masses`, or `--labels lesion=LABEL` for every type). Errors list the target's labels and
  the bank's lesion types.

`required_fills` then says which target classes a bank case does not label (a target `kidney` is both kidneys;
a target `spleen` is not in a liver case): those come from an organ map (TotalSegmentator) or the case is
refused for that target (`synthesis_bank.prepare`).

For a region-based target the value written is the integer whose region memberships are exactly the regions
containing the chosen one (KiTS `tumor` -> 2, `masses` -> 3, `kidney` -> 1), i.e. what nnU-Net's own
region conversion turns back into that region. Pure numpy + ld_augment: no nnU-Net import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ld_augment.errors import ConfigError, InputError, brief
from ld_augment.organs.registry import normalize_organ_name

DROP = "drop"
SKIP = "skip"        # `--lesion-map cyst=skip`: cases of that type are left out for this target
BACKGROUND = "background"
LESION_WORDS = ("tumor", "tumour", "tumors", "tumours", "cancer", "lesion", "lesions", "mass", "masses",
                "metastasis", "metastases", "carcinoma", "neoplasm")
BANK_CLASSES = ("organ", "lesion")
IGNORE = "ignore"
# a target label that means "malignant tumour" (MSD `cancer`, KiTS `tumor`, `liver_tumor`); not mass/lesion
TUMOUR_WORDS = ("tumor", "tumour", "tumors", "tumours", "cancer", "cancers", "carcinoma", "malignant", "malignancy",
                "metastasis", "metastases", "neoplasm", "hcc", "rcc")
MALIGNANT_WORDS = ("carcinoma", "adenocarcinoma", "cholangiocarcinoma", "cancer", "malignant", "malignancy",
                   "metastasis", "metastases", "metastatic", "sarcoma", "lymphoma", "melanoma", "hcc", "rcc",
                   "hepatoblastoma", "nephroblastoma", "mesothelioma", "leiomyosarcoma")
BENIGN_WORDS = ("cyst", "cysts", "cystic", "hemangioma", "haemangioma", "adenoma", "lipoma", "angiomyolipoma", "fnh",
                "hyperplasia", "benign", "abscess", "hamartoma", "oncocytoma", "calcification", "stone", "calculus",
                "fibroma", "granuloma", "hematoma", "haematoma")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def is_lesion_name(name: str) -> bool:
    """True for target label names that mean "a lesion" (`cancer`, `liver_tumor`, `masses`, ...)."""
    return any(w in LESION_WORDS for w in _words(name))


def is_tumour_label(name: str) -> bool:
    """True for target label names that mean a malignant tumour (`cancer`, `tumor`, `liver_tumor`), not the
    generic `masses`/`lesion` (KiTS `masses` also holds cysts)."""
    return any(w in TUMOUR_WORDS for w in _words(name))


def lesion_kind(lesion_type: str | None) -> str:
    """"malignant", "benign" or "unknown" for a bank lesion type (free text), by its words."""
    words = _words(lesion_type or "")
    malignant = any(w in MALIGNANT_WORDS for w in words)
    benign = any(w in BENIGN_WORDS for w in words)
    if malignant and not benign:
        return "malignant"
    if benign and not malignant:
        return "benign"
    return "unknown"


def names_organ(target_name: str, organ: str) -> bool:
    """Does the label name `target_name` mean the organ `organ` (canonical ld_augment name)? The generic name
    `organ` (the bank's own scheme) means whichever organ the case is about."""
    if target_name.strip().lower() == "organ":
        return True
    if is_lesion_name(target_name):
        return False
    try:
        canonical = normalize_organ_name(target_name)
    except (KeyError, ValueError, ConfigError):
        return False
    return canonical == organ or organ.startswith(canonical + "_")


def bank_roles(labels: Mapping[str, Any], *, origin: str = "label_scheme") -> dict[str, str]:
    """Label name -> role ("background", "organ", "lesion", "ignore") of a bank's label scheme.

    A bank may name its classes after the target (`{background: 0, liver: 1, cancer: 2}`, so its label files
    need no mapping): a name of an organ is the organ, `organ`/`lesion`/`ignore` are themselves, and any other
    name (cancer, tumor, cyst, ...) is the lesion. One lesion class, at most one organ and one ignore class.
    """
    if len(labels) > 4:   # checked first: a huge mapping is refused before any name is looked at
        raise ConfigError(f"{origin}: {len(labels)} class names {brief(list(labels))}; a bank labels at most "
                          f"background, one organ, one lesion and one ignore class")
    roles: dict[str, str] = {}
    for name in labels:
        key = str(name)
        if key in (BACKGROUND, IGNORE, *BANK_CLASSES):
            roles[key] = key
        elif not is_lesion_name(key) and not is_tumour_label(key) and _is_organ_name(key):
            roles[key] = "organ"
        else:
            roles[key] = "lesion"
    for role in ("organ", "lesion", IGNORE):
        named = [n for n, r in roles.items() if r == role]
        if len(named) > 1:
            raise ConfigError(f"{origin}: {brief(named)} would all be the bank's {role} class; a bank labels one organ and "
                              f"one lesion class (names of organs are the organ, any other name is the lesion)")
    if BACKGROUND not in roles or "lesion" not in roles.values():
        raise ConfigError(f"{origin}: needs background: 0 and a lesion label, got {brief(dict(labels))}")
    return roles


def parse_label_args(items: Sequence[str] | None, *, origin: str = "--labels") -> dict[str, str]:
    """`["organ=liver", "renal cell carcinoma=tumor"]` -> {"organ": "liver", "renal cell carcinoma": "tumor"}."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"{origin} {item!r}: expected BANK=TARGET, e.g. organ=liver, lesion=cancer, "
                              f"organ=drop or \"renal cell carcinoma=tumor\"")
        if key in out and out[key] != value:
            raise ConfigError(f"{origin}: {key!r} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _values(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


@dataclass(frozen=True)
class TargetLabels:
    """A target dataset.json's `labels` (plain or region-based) and the integer each name is written as."""

    labels: Mapping[str, Any]
    origin: str = "target dataset.json"

    @property
    def region_based(self) -> bool:
        return any(isinstance(v, (list, tuple)) for v in self.labels.values())

    def names(self) -> list[str]:
        return [n for n in self.labels if n != BACKGROUND and n != "ignore"]

    def written_values(self) -> set[int]:
        return {v for name in self.labels for v in _values(self.labels[name])}

    def value_of(self, name: str) -> int:
        """The integer a label file holds for `name` (background and `drop` -> 0)."""
        if name in (BACKGROUND, DROP):
            return 0
        if name not in self.labels:
            raise ConfigError(f"{self.origin}: no label named {name!r}; its labels are {dict(self.labels)}")
        if not self.region_based:
            return _values(self.labels[name])[0]
        regions = {n: set(_values(self.labels[n])) for n in self.names()}
        wanted = {n for n, s in regions.items() if s >= regions[name]}      # the region and every region around it
        candidates = sorted(v for v in set().union(*regions.values())
                            if {n for n, s in regions.items() if v in s} == wanted)
        if len(candidates) != 1:
            raise ConfigError(f"{self.origin}: region {name!r}={list(self.labels[name])} has "
                              f"{'no' if not candidates else 'more than one'} label value that lies in exactly "
                              f"the regions {sorted(wanted)} ({candidates}); map to another region")
        return candidates[0]


@dataclass(frozen=True)
class Resolved:
    """How one bank class of one (organ, lesion type) is written: the target name, its value and the rule."""

    target: str
    value: int
    rule: str


@dataclass
class LabelMapping:
    """The resolved mapping for the (organ, lesion type) pairs of a bank, plus what the record says about it."""

    bank_labels: dict[str, int]
    target: TargetLabels
    per_pair: dict[tuple[str | None, str | None], dict[str, Resolved]] = field(default_factory=dict)

    def skipped(self, organ: str | None, lesion_type: str | None) -> str | None:
        """The reason a case of this pair is left out for the target (`TYPE=skip`), else None."""
        res = self.per_pair[(organ, lesion_type)].get("lesion")
        return f"lesion type {lesion_type!r} is skipped for this target ({res.rule})" if res and res.target == SKIP \
            else None

    def lut_for(self, organ: str | None, lesion_type: str | None) -> dict[int, int]:
        """bank value -> target value for a case of this organ and lesion type (not for a skipped pair)."""
        resolved = self.per_pair[(organ, lesion_type)]
        lut = {self.bank_labels[BACKGROUND]: 0}
        for cls, res in resolved.items():
            lut[self.bank_labels[cls]] = res.value
        return lut

    def is_identity(self, lut: Mapping[int, int]) -> bool:
        return all(k == v for k, v in lut.items())

    def describe(self) -> dict[str, Any]:
        """JSON for the prepare record: every pair with target names, values and the rule that chose them."""
        return {
            "bank_labels": dict(self.bank_labels),
            "target_labels": {k: (list(v) if isinstance(v, (list, tuple)) else v)
                              for k, v in self.target.labels.items()},
            "region_based": self.target.region_based,
            "pairs": [{"organ": organ, "lesion_type": lt,
                       **{cls: {"target": r.target, "value": r.value, "rule": r.rule} for cls, r in res.items()}}
                      for (organ, lt), res in sorted(self.per_pair.items(), key=lambda kv: str(kv[0]))],
        }


def resolve_mapping(bank_labels: Mapping[str, Any], target_labels: Mapping[str, Any],
                    pairs: Iterable[tuple[str | None, str | None]], explicit: Mapping[str, str] | None = None, *,
                    bank_file: str = "bank dataset.json", target_file: str = "target dataset.json") -> LabelMapping:
    """Resolve the mapping for each (organ, lesion type) pair of the bank; ConfigError naming both sides."""
    explicit = dict(explicit or {})
    roles = bank_roles(bank_labels, origin=bank_file)
    bank = {roles[str(k)]: int(v) for k, v in bank_labels.items()}
    own_names = {roles[str(k)]: str(k) for k in bank_labels}      # a bank labelled like the target: same name
    target = TargetLabels(dict(target_labels), target_file)
    if _values(target_labels.get(BACKGROUND, -1)) != (0,):
        raise ConfigError(f"{target_file}: nnU-Net needs background: 0, got labels {dict(target_labels)}")
    for key, name in explicit.items():
        if name not in (DROP, BACKGROUND, SKIP) and name not in target.labels:
            raise ConfigError(f"--labels {key}={name}: {target_file} has no label {name!r} "
                              f"(its labels: {target.names()}; or use {key}=drop)")
    pairs = sorted(set(pairs), key=str)
    lesion_types = sorted({lt for _, lt in pairs if lt})
    used: set[str] = set()
    mapping = LabelMapping(bank, target)
    for organ, lesion_type in pairs:
        resolved: dict[str, Resolved] = {}
        for cls in BANK_CLASSES:
            if cls not in bank:
                continue
            own = lesion_type if cls == "lesion" else organ
            res = _resolve_one(cls, own, target, explicit, used, bank_file=bank_file, target_file=target_file,
                               lesion_types=lesion_types, bank_name=own_names.get(cls, cls))
            resolved[cls] = res
        _check_distinct(resolved, organ, lesion_type, target_file)
        if IGNORE in bank and "lesion" in resolved and resolved["lesion"].target != SKIP:
            resolved[IGNORE] = _resolve_ignore(target, resolved["lesion"])
        mapping.per_pair[(organ, lesion_type)] = resolved
    unused = sorted(set(explicit) - used)
    if unused:
        organs = sorted({o for o, _ in pairs if o})
        raise ConfigError(f"--labels {', '.join(unused)}: not a bank class, organ or lesion type of this bank "
                          f"(classes {list(BANK_CLASSES)}, organs {organs}, lesion types {lesion_types})")
    return mapping


def _resolve_ignore(target: TargetLabels, lesion: Resolved) -> Resolved:
    """The bank's ignore band (the transition of an ill-defined lesion, inside its label) in the target: the
    target's own ignore label when it has one (nnU-Net then skips those voxels in the loss), else the lesion it
    belongs to, i.e. what the label would have been without the band."""
    if IGNORE in target.labels:
        return Resolved(IGNORE, target.value_of(IGNORE), "ignore label of the target")
    return Resolved(lesion.target, lesion.value, "no ignore label in the target: the band is lesion")


def _resolve_one(cls: str, own: str | None, target: TargetLabels, explicit: Mapping[str, str], used: set[str], *,
                 bank_file: str, target_file: str, lesion_types: Sequence[str] = (), bank_name: str | None = None) -> Resolved:
    for key in ([own] if own else []) + [cls]:
        if key in explicit:
            used.add(key)
            name = explicit[key]
            if name == SKIP:
                if cls != "lesion":
                    raise ConfigError(f"--labels {key}={SKIP}: only lesion types can be skipped")
                return Resolved(SKIP, -1, f"--labels {key}={SKIP}")
            return Resolved(BACKGROUND if name == DROP else name, target.value_of(name), f"--labels {key}={name}")
    for name in dict.fromkeys([bank_name or cls, cls]):
        if name in target.labels:
            return Resolved(name, target.value_of(name), "same name")
    if cls == "organ":
        matches = [n for n in target.names() if own and names_organ(n, own)]
        hint = f"--labels organ=<one of {target.names()}> or organ=drop"
        what = f"the organ {own!r}" if own else "the bank's organ (the manifest names none)"
        if len(matches) == 1:
            return Resolved(matches[0], target.value_of(matches[0]), "by name")
        if not matches:
            raise ConfigError(f"{bank_file}: bank label {cls!r} ({what}) has no label in {target_file} "
                              f"(labels {target.names()}); say where it goes: {hint}")
        raise ConfigError(f"{bank_file}: bank label {cls!r} ({what}) could be any of {matches} in {target_file}; "
                          f"say which: {hint}")
    if own and own in target.labels:
        return Resolved(own, target.value_of(own), "same name as the lesion type")
    kind = lesion_kind(own)
    tumour = [n for n in target.names() if is_tumour_label(n)]
    if kind == "malignant" and len(tumour) == 1:
        return Resolved(tumour[0], target.value_of(tumour[0]), "malignant type -> the target's tumour label")
    if kind == "malignant":
        why = (f"a malignant type, but {target_file} has {'no tumour label' if not tumour else 'several tumour labels ' + str(tumour)}")
    elif kind == "benign":
        why = "a benign type: it goes to a target label only with your word (a cyst is not a cancer)"
    else:
        why = "neither a known malignant nor a known benign type" if own else "the manifest names no lesion type"
    key = f'"{own}=<label>"' if own and " " in own else f"{own}=<label>" if own else "<type>=<label>"
    raise ConfigError(f"{bank_file}: bank lesion type {own!r} has no stated label in {target_file}: {why}. Target "
                      f"labels: {target.names()}; the bank's lesion types: {list(lesion_types)}. Say where it goes: "
                      f"--lesion-map {key} (or {own or '<type>'}=skip to leave those cases out, or --labels "
                      f"lesion=<label> for every type)")


@dataclass(frozen=True)
class OrganFill:
    """A target class a bank case does not label itself: `organ` (a TotalSegmentator name or group) is taken
    from an organ map of the case's source and written as `value` where the bank label is background."""

    target: str
    value: int
    organ: str


def required_fills(target: TargetLabels, organ: str | None, resolved: Mapping[str, Resolved]) -> list[OrganFill]:
    """The organ classes of the target a bank case of `organ` leaves unlabelled, given its resolved mapping.

    The bank labels one organ (`organ`, e.g. kidney_left). A target class naming an organ is complete only when
    it is that very organ: a target `kidney` (both kidneys) or any other organ of the target (a `spleen` beside
    a `liver`) must come from an organ map. Lesion-like or unknown target names need nothing: a case may simply
    have none of that lesion. A generic target `organ` is the bank's own class.
    """
    organ_target = resolved.get("organ")
    fills = []
    for name in target.names():
        if name == IGNORE or name == "organ" or is_lesion_name(name) or is_tumour_label(name):
            continue
        try:
            canonical = normalize_organ_name(name)
        except (KeyError, ValueError, ConfigError):
            continue
        if organ_target is not None and organ_target.target == name and canonical == organ:
            continue
        fills.append(OrganFill(name, target.value_of(name), canonical))
    return fills


def _check_distinct(resolved: Mapping[str, Resolved], organ: str | None, lesion_type: str | None,
                    target_file: str) -> None:
    """Two bank meanings on one target value would teach the network that organ and lesion are the same."""
    seen: dict[int, str] = {}
    if resolved.get("lesion") is not None and resolved["lesion"].target == SKIP:
        return
    for cls, res in resolved.items():
        if res.value == 0:
            if cls == "lesion":
                raise ConfigError(f"bank lesion ({lesion_type!r}) would become background in {target_file}: "
                                  f"a lesion cannot be dropped")
            continue
        if res.value in seen:
            raise ConfigError(f"bank {seen[res.value]!r} and bank {cls!r} (organ {organ!r}, lesion type "
                              f"{lesion_type!r}) would both become {res.target!r}={res.value} in {target_file}; "
                              f"map them to different labels")
        seen[res.value] = cls


def remap(label: np.ndarray, lut: Mapping[int, int], *, file: str) -> np.ndarray:
    """Apply a bank->target lookup table; InputError naming the file for a value the bank does not define."""
    values = np.unique(label)
    stray = sorted(int(v) for v in values if int(v) not in lut)
    if stray:
        raise InputError(f"{file}: label value(s) {stray} are not bank labels ({sorted(lut)})")
    out = np.zeros(label.shape, dtype=np.uint8 if max(lut.values(), default=0) < 256 else np.int16)
    for src, dst in lut.items():
        if dst:
            out[label == src] = dst
    return out


# --- labelled sources (nnU-Net raw datasets used as bank sources) ------------------------------------------

def source_roles(source_labels: Mapping[str, Any], organ: str) -> dict[int, str]:
    """Source label value -> "organ", "lesion" or "background" for a case synthesized in `organ`.

    A label naming the organ (or a synonym) is the organ; a label naming another organ is background (it is not
    a lesion a new one must avoid, nor this bank's organ); anything else (cancer, tumour, cyst, ...) is a lesion,
    so a new lesion never overwrites it.
    """
    roles: dict[int, str] = {}
    for name, value in source_labels.items():
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"region-based source label {name}: {list(value)} is not supported as a bank source")
        if name == BACKGROUND or name == "ignore":
            roles[int(value)] = BACKGROUND
        elif names_organ(name, organ):
            roles[int(value)] = "organ"
        elif not is_lesion_name(name) and _is_organ_name(name):
            roles[int(value)] = BACKGROUND
        else:
            roles[int(value)] = "lesion"
    return roles


def _is_organ_name(name: str) -> bool:
    try:
        normalize_organ_name(name)
    except (KeyError, ValueError, ConfigError):
        return False
    return True


def source_to_scheme(label: np.ndarray, roles: Mapping[int, str], scheme: Mapping[str, int], *,
                     file: str) -> np.ndarray:
    """A source label map in the bank's scheme values (organ/lesion/background by role)."""
    lut = {v: scheme.get(role, scheme[BACKGROUND]) if role != "organ" or "organ" in scheme else scheme[BACKGROUND]
           for v, role in roles.items()}
    return remap(label, lut, file=file)
