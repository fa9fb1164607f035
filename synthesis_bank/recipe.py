"""Bank recipes: what to synthesize, loaded from YAML/JSON into a validated, frozen `Recipe`.

Every value is checked when the recipe is loaded (not hours into a build), and every error names the recipe
file, the offending key and the valid choices. Example (relative paths resolve against the recipe's folder):

```yaml
sources: {nnunet_raw: ../nnUNet_raw/Dataset003_Liver, segmentations: ../totalseg}  # or {folder: cts/,
#   segmentations: segs/} (matched by file name) or {list_file: cases.txt} (lines "ct_path[,seg_path]")
organs: [liver]                                  # or {liver: 0.8, kidney_left: 0.2}
lesion_types: {hepatocellular carcinoma: 0.6, cyst: 0.4}
attributes:
  density: {choices: {hypodense lesion: 0.7, hyperdense lesion: 0.3}}
  density variations: homogeneous                # a fixed value; "llm" lets the LLM writer choose
report_writer: offline                           # or {llm: {base_url: http://..., model: ..., timeout_s: 30,
#                                                     max_retries: 3}}
lesions_per_case: [1, 3]
variants_per_source: 4
engine: {mask: procedural, texture: procedural, device: cpu}
#   the paper's networks: {mask: diffusion, texture: diffusion, device: cuda,
#     mask_options: {lightning_checkpoint: LMNet.ckpt, encoder: biomedclip, encoder_weights: biomedclip/},
#     texture_options: {lightning_checkpoint: LINet.ckpt, vq_lightning_checkpoint: VQ.ckpt, steps: 50}}
seed: 0
label_scheme: {background: 0, organ: 1, lesion: 2}  # or the target's names: {background: 0, liver: 1, cancer: 2}
segmentation: totalsegmentator                   # for sources without a segmentation; or "error"
dataset_name: LiverBank
dataset_id: 501
calibrate_from: ../nnUNet_raw/Dataset003_Liver   # optional: sizes, density, margin, heterogeneity and shape
#   drawn from these real lesions instead of the literature priors (see synthesis_bank/calibration.py)
```
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ld_augment.errors import ConfigError, brief
from ld_augment.io.textfile import MAX_CONFIG_BYTES, read_bytes_bounded
from ld_augment.pipeline.preprocess import MAX_LESIONS_PER_CASE

from synthesis_bank import vocabulary

DEFAULT_LABEL_SCHEME = {"background": 0, "organ": 1, "lesion": 2}
SOURCE_KINDS = ("folder", "list_file", "nnunet_raw")
SEGMENTATION_MODES = ("totalsegmentator", "error")
LLM = "llm"
#: Variants per source CT: far above any useful bank (each is a full synthesis), far below what would take
#: the planner's memory (the probe: 10^12 variants planned eagerly reached 1.8 GB in 2 minutes).
MAX_VARIANTS_PER_SOURCE = 10_000


@dataclass(frozen=True)
class Sources:
    """Where the source CTs come from. `kind` is one of SOURCE_KINDS; `path` is absolute."""

    kind: str
    path: Path
    segmentations: Path | None = None


@dataclass(frozen=True)
class LlmWriter:
    base_url: str
    model: str
    timeout_s: float = 30.0    # per request; a dead server costs at most timeout_s x (max_retries + 1) per build
    max_retries: int = 3


#: Engine options a recipe may not set: a recipe is a shared file, and these run code stored in checkpoints.
FORBIDDEN_OPTIONS = ("allow_pickle",)
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


#: Engine options that name weight files (resolved against the recipe's folder; hashed into the manifest).
WEIGHT_OPTIONS = ("checkpoint", "lightning_checkpoint", "vq_checkpoint", "vq_lightning_checkpoint", "encoder_weights")


@dataclass(frozen=True)
class EngineSpec:
    """Engines by registry name plus the keyword options each is created with (e.g. checkpoint paths)."""

    mask: str = "procedural"
    texture: str = "procedural"
    mask_options: Mapping[str, Any] = field(default_factory=dict)
    texture_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def checkpoints(self) -> dict[str, Path]:
        """Weight files named in the options, as {"mask.checkpoint": path, ...} (files only, not folders)."""
        out = {}
        for role, options in (("mask", self.mask_options), ("texture", self.texture_options)):
            for key in WEIGHT_OPTIONS:
                if key in options and Path(options[key]).is_file():
                    out[f"{role}.{key}"] = Path(options[key])
        return out


@dataclass(frozen=True)
class Recipe:
    """A validated bank recipe. Weighted choices are stored as {value: probability} (normalized)."""

    sources: Sources
    organs: Mapping[str, float]
    lesion_types: Mapping[str, float]
    attributes: Mapping[str, Any] = field(default_factory=dict)  # str | {value: p} | "llm"
    report_writer: str | LlmWriter = "offline"
    lesions_per_case: tuple[int, int] = (1, 1)
    variants_per_source: int = 1
    engine: EngineSpec = field(default_factory=EngineSpec)
    seed: int = 0
    label_scheme: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LABEL_SCHEME))   # role -> id
    label_names: Mapping[str, str] = field(default_factory=dict)   # role -> name in dataset.json (default: role)
    segmentation: str = "totalsegmentator"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shrink: bool = False  # let placement shrink boxes that do not fit small organs/crops
    storage: str = "full"  # "patches": source reference + changed region per case (synthesis_bank.patch_store)
    dataset_name: str = "LesionBank"
    dataset_id: int | None = None
    description: str = "Synthetic lesion bank built by ld-augment"
    calibrate_from: Any = None  # synthesis_bank.calibration.CalibrationSpec: real lesions instead of the priors
    origin: str = "<dict>"  # the recipe file, for messages

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str | Path = "<dict>", base_dir: Path | None = None) -> "Recipe":
        """Validate a parsed recipe. Relative paths resolve against `base_dir` (the recipe's folder)."""
        origin = str(origin)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
        valid = [f.name for f in fields(cls) if f.name not in ("origin", "label_names")]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"{origin}: unknown recipe key(s) {brief(unknown)}; valid keys: {valid}")
        for required in ("sources", "organs", "lesion_types"):
            if required not in data:
                raise ConfigError(f"{origin}: missing required key '{required}'")
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        v = _Validator(origin, base)
        writer = v.report_writer(data.get("report_writer", "offline"))
        attributes = v.attributes(data.get("attributes") or {}, writer)
        return cls(
            sources=v.sources(data["sources"]),
            organs=v.organs(data["organs"]),
            lesion_types=v.weighted("lesion_types", data["lesion_types"], vocabulary.lesion_type_choices()),
            attributes=attributes,
            report_writer=writer,
            lesions_per_case=v.count_range("lesions_per_case", data.get("lesions_per_case", 1)),
            variants_per_source=v.bounded_int("variants_per_source", data.get("variants_per_source", 1),
                                              MAX_VARIANTS_PER_SOURCE),
            engine=v.engine(data.get("engine") or {}),
            seed=v.non_negative_int("seed", data.get("seed", 0)),
            label_scheme=v.label_scheme(data.get("label_scheme", DEFAULT_LABEL_SCHEME)),
            label_names=v.label_names(data.get("label_scheme", DEFAULT_LABEL_SCHEME)),
            segmentation=v.one_of("segmentation", data.get("segmentation", "totalsegmentator"), SEGMENTATION_MODES),
            spacing=v.spacing(data.get("spacing", (1.0, 1.0, 1.0))),
            shrink=v.boolean("shrink", data.get("shrink", False)),
            storage=v.one_of("storage", data.get("storage", "full"), ("full", "patches")),
            dataset_name=v.dataset_name(data.get("dataset_name", "LesionBank")),
            dataset_id=v.dataset_id(data.get("dataset_id")),
            description=v.string("description", data.get("description", cls.description)),
            calibrate_from=v.calibrate_from(data.get("calibrate_from"), writer),
            origin=origin,
        )

    def dataset_labels(self) -> dict[str, int]:
        """The bank dataset.json's `labels`: the recipe's own names (e.g. the target's liver/cancer) -> id."""
        return {self.label_names.get(role, role): v for role, v in self.label_scheme.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for dataset.json provenance); not guaranteed to round-trip relative paths."""
        writer: Any = self.report_writer
        if isinstance(writer, LlmWriter):
            writer = {"llm": {"base_url": writer.base_url, "model": writer.model, "timeout_s": writer.timeout_s,
                              "max_retries": writer.max_retries}}
        return {
            "sources": {"kind": self.sources.kind, "path": str(self.sources.path),
                        "segmentations": str(self.sources.segmentations) if self.sources.segmentations else None},
            "organs": dict(self.organs), "lesion_types": dict(self.lesion_types),
            "attributes": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.attributes.items()},
            "report_writer": writer, "lesions_per_case": list(self.lesions_per_case),
            "variants_per_source": self.variants_per_source,
            "engine": {"mask": self.engine.mask, "texture": self.engine.texture, "device": self.engine.device,
                       "mask_options": dict(self.engine.mask_options),
                       "texture_options": dict(self.engine.texture_options)},
            "seed": self.seed, "label_scheme": self.dataset_labels(), "segmentation": self.segmentation,
            "spacing": list(self.spacing), "shrink": self.shrink, "dataset_name": self.dataset_name, "dataset_id": self.dataset_id,
            # only when set, so the hash of every recipe without it stays what it was
            **({"calibrate_from": self.calibrate_from.to_dict()} if self.calibrate_from is not None else {}),
            # only when not the default, so banks built before the option keep their recipe hash
            **({"storage": self.storage} if self.storage != "full" else {}),
        }


def load_recipe(path: str | Path) -> Recipe:
    """Load a recipe from a .yaml/.yml/.json file; relative paths inside resolve against the file's folder.

    At most MAX_CONFIG_BYTES; YAML anchors/aliases and duplicate keys (YAML and JSON) are refused with their
    line: an alias can expand a few lines into gigabytes, and a duplicate key silently took the last value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        text = read_bytes_bounded(path, what="recipe", limit=MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); save the recipe as "
                          "UTF-8 YAML or JSON") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_unique_json_object)
        else:
            data = load_strict_yaml(text)
    except _DuplicateOrAlias as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except Exception as exc:  # json.JSONDecodeError or yaml.YAMLError: both mean "not a parseable recipe"
        raise ConfigError(f"{path}: cannot parse recipe: {_parse_problem(exc)}") from None
    return Recipe.from_dict(data or {}, origin=path, base_dir=path.resolve().parent)


class _DuplicateOrAlias(ValueError):
    """A recipe construct refused on purpose (its message names the line)."""


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateOrAlias(f"duplicate key {brief(key)} in a JSON object; give each key once")
        out[key] = value
    return out


def load_strict_yaml(text: str) -> Any:
    """yaml.safe_load without anchors/aliases (refused: "billion laughs") and without duplicate keys."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
                raise _DuplicateOrAlias(f"YAML {kind} {brief(event.anchor)} (line {event.start_mark.line + 1}): "
                                        "anchors and aliases are not accepted in a recipe; write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor names it below
                if first != line:
                    raise _DuplicateOrAlias(f"duplicate key {brief(key)} on line {line} (first on line {first}); "
                                            "give each key once")
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_problem(exc: Exception) -> str:
    """One line with the problem and its position, never the offending text (a mistyped --recipe may point
    at a private file, and YAML's messages quote the line)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


class _Validator:
    """One method per recipe field; each returns the normalized value or raises ConfigError naming the file."""

    def __init__(self, origin: str, base: Path) -> None:
        self.origin = origin
        self.base = base

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.origin}: '{key}': {problem}")

    def path(self, key: str, value: Any, *, kind: str) -> Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise self.fail(key, f"expected a path, got {brief(value)}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (self.base / p)
        ok = p.is_dir() if kind == "dir" else p.is_file()
        if not ok:
            raise self.fail(key, f"{'folder' if kind == 'dir' else 'file'} not found: {p}")
        return p.resolve()

    def sources(self, value: Any) -> Sources:
        if not isinstance(value, Mapping):
            raise self.fail("sources", f"expected a mapping with one of {list(SOURCE_KINDS)}, got {brief(value)}")
        kinds = [k for k in SOURCE_KINDS if k in value]
        unknown = sorted(set(value) - set(SOURCE_KINDS) - {"segmentations"})
        if unknown:
            raise self.fail("sources", f"unknown key(s) {brief(unknown)}; valid keys: {list(SOURCE_KINDS) + ['segmentations']}")
        if len(kinds) != 1:
            raise self.fail("sources", f"give exactly one of {list(SOURCE_KINDS)}, got {kinds or 'none'}")
        kind = kinds[0]
        kind_of_path = "file" if kind == "list_file" else "dir"
        path = self.path(f"sources.{kind}", value[kind], kind=kind_of_path)
        segs = value.get("segmentations")
        if segs is not None and kind == "list_file":
            raise self.fail("sources.segmentations", "a list file names each segmentation on its line ('ct,seg')")
        seg_path = self.path("sources.segmentations", segs, kind="dir") if segs is not None else None
        if kind == "nnunet_raw":
            for sub in ("imagesTr", "labelsTr"):
                if not (path / sub).is_dir():
                    raise self.fail("sources.nnunet_raw", f"{path} is not an nnU-Net raw dataset (no {sub}/ folder)")
        return Sources(kind=kind, path=path, segmentations=seg_path)

    def choices(self, key: str, value: Any) -> dict[str, float]:
        """A string, a list (uniform) or {value: weight} -> {value: probability}."""
        if isinstance(value, str):
            value = {value: 1.0}
        elif isinstance(value, (list, tuple)):
            if len(set(value)) != len(value):
                raise self.fail(key, f"duplicate entries in {brief(list(value))}")
            value = {v: 1.0 for v in value}
        if not isinstance(value, Mapping) or not value:
            raise self.fail(key, f"expected a value, a list, or {{value: weight}}, got {brief(value)}")
        out: dict[str, float] = {}
        for name, weight in value.items():
            if not isinstance(name, str) or not name.strip():
                raise self.fail(key, f"choice names must be non-empty strings, got {brief(name)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
                raise self.fail(key, f"weight of {brief(name)} must be a positive number, got {brief(weight)}")
            out[name] = float(weight)
        total = sum(out.values())
        return {k: w / total for k, w in out.items()}

    def weighted(self, key: str, value: Any, allowed: list[str] | None) -> dict[str, float]:
        out = self.choices(key, value)
        if allowed is not None:
            bad = [k for k in out if k not in allowed]
            if bad:
                raise self.fail(key, f"unknown value(s) {brief(bad)}; choices: {allowed}")
        return out

    def organs(self, value: Any) -> dict[str, float]:
        raw = self.choices("organs", value)
        out: dict[str, float] = {}
        for name, p in raw.items():
            try:
                canonical = vocabulary.normalize_organ(name)
            except ConfigError as exc:
                raise self.fail("organs", str(exc)) from None
            out[canonical] = out.get(canonical, 0.0) + p
        return out

    def attributes(self, value: Any, writer: str | LlmWriter) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail("attributes", f"expected a mapping of attribute -> value | {{choices: ...}} | 'llm', got {brief(value)}")
        out: dict[str, Any] = {}
        for name, spec in value.items():
            key = f"attributes.{name}"
            try:
                attr = vocabulary.normalize_attribute_name(str(name))
            except ConfigError as exc:
                raise self.fail(key, str(exc)) from None
            if spec == LLM:
                if not isinstance(writer, LlmWriter):
                    raise self.fail(key, "'llm' needs report_writer: {llm: {base_url, model}}")
                out[attr] = LLM
                continue
            if isinstance(spec, Mapping):
                if set(spec) != {"choices"}:
                    raise self.fail(key, f"a mapping must be {{choices: {{value: weight}}}}, got keys {brief(sorted(map(str, spec)))}")
                choices = self.choices(key, spec["choices"])
            elif isinstance(spec, str):
                choices = {spec: 1.0}
            else:
                raise self.fail(key, f"expected a value, {{choices: {{value: weight}}}} or 'llm', got {brief(spec)}")
            normalized: dict[str, float] = {}
            for val, p in choices.items():
                try:
                    canonical = vocabulary.normalize_attribute_value(attr, val)
                except ConfigError as exc:
                    raise self.fail(key, str(exc)) from None
                normalized[canonical] = normalized.get(canonical, 0.0) + p
            out[attr] = next(iter(normalized)) if len(normalized) == 1 else normalized
        return out

    def report_writer(self, value: Any) -> str | LlmWriter:
        if value == "offline":
            return "offline"
        if isinstance(value, Mapping) and set(value) == {"llm"} and isinstance(value["llm"], Mapping):
            llm = value["llm"]
            unknown = sorted(set(llm) - {"base_url", "model", "timeout_s", "max_retries"})
            if unknown or not all(isinstance(llm.get(k), str) and llm.get(k) for k in ("base_url", "model")):
                raise self.fail("report_writer.llm", f"needs base_url and model (strings) and optionally timeout_s "
                                                     f"and max_retries, got {brief(dict(llm))}")
            timeout = llm.get("timeout_s", 30.0)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
                raise self.fail("report_writer.llm.timeout_s", f"expected seconds in (0, 3600], got {brief(timeout)}")
            retries = self.non_negative_int("report_writer.llm.max_retries", llm.get("max_retries", 3))
            if retries > 20:
                raise self.fail("report_writer.llm.max_retries", f"at most 20, got {retries}")
            return LlmWriter(base_url=llm["base_url"], model=llm["model"], timeout_s=float(timeout), max_retries=retries)
        raise self.fail("report_writer", f"expected 'offline' or {{llm: {{base_url, model}}}}, got {brief(value)}")

    def count_range(self, key: str, value: Any, limit: int = MAX_LESIONS_PER_CASE) -> tuple[int, int]:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            lo, hi = (self.positive_int(key, v) for v in value)
            if lo > hi:
                raise self.fail(key, f"[min, max] needs min <= max, got {brief(list(value))}")
        else:
            lo = hi = self.positive_int(key, value)
        if hi > limit:
            raise self.fail(key, f"at most {limit} lesions per case, got {hi}")
        return lo, hi

    def _int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {brief(value)}")
        return value

    def bounded_int(self, key: str, value: Any, high: int) -> int:
        if self.positive_int(key, value) > high:
            raise self.fail(key, f"at most {high}, got {value}")
        return value

    def positive_int(self, key: str, value: Any) -> int:
        if self._int(key, value) < 1:
            raise self.fail(key, f"must be >= 1, got {value}")
        return value

    def non_negative_int(self, key: str, value: Any) -> int:
        if self._int(key, value) < 0:
            raise self.fail(key, f"must be >= 0, got {value}")
        return value

    def one_of(self, key: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(key, f"unknown value {brief(value)}; choices: {list(allowed)}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {brief(value)}")
        return value

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {brief(value)}")
        return value

    def engine(self, value: Any) -> EngineSpec:
        if not isinstance(value, Mapping):
            raise self.fail("engine", f"expected a mapping, got {brief(value)}")
        valid = ["mask", "texture", "mask_options", "texture_options", "device"]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise self.fail("engine", f"unknown key(s) {brief(unknown)}; valid keys: {valid}")
        mask = self.one_of("engine.mask", value.get("mask", "procedural"), vocabulary.engine_names("mask"))
        texture = self.one_of("engine.texture", value.get("texture", "procedural"), vocabulary.engine_names("texture"))
        options = {role: self.engine_options(f"engine.{role}_options", value.get(f"{role}_options") or {})
                   for role in ("mask", "texture")}
        for role, name in (("mask", mask), ("texture", texture)):
            self.check_engine_signature(f"engine.{role}_options", role, name, options[role])
        device = self.device("engine.device", value.get("device", "cpu"))
        return EngineSpec(mask=mask, texture=texture, mask_options=options["mask"],
                          texture_options=options["texture"], device=device)

    def engine_options(self, key: str, value: Any) -> dict[str, Any]:
        """Keyword options for an engine; weight paths must exist (encoder_weights may be a folder)."""
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping of engine options, got {brief(value)}")
        forbidden = [name for name in FORBIDDEN_OPTIONS if name in value]
        if forbidden:
            raise self.fail(f"{key}.{forbidden[0]}", "not allowed in a recipe (it lets a checkpoint run code when "
                            "loaded); a person who trusts the checkpoint passes --allow-pickle on the command line")
        out = dict(value)
        for name in WEIGHT_OPTIONS:
            if name in out:
                raw = Path(str(out[name])).expanduser()
                kind = "dir" if name == "encoder_weights" and (self.base / raw).is_dir() else "file"
                out[name] = str(self.path(f"{key}.{name}", out[name], kind=kind))
        return out

    def device(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not _DEVICE_RE.match(value):
            raise self.fail(key, f"expected 'cpu', 'cuda' or 'cuda:N', got {brief(value)}")
        return value

    def check_engine_signature(self, key: str, role: str, engine: str, options: Mapping[str, Any]) -> None:
        """Option names and value types against the engine's constructor (types judged by each default)."""
        from ld_augment.engines.registry import engine_parameters

        try:
            params = engine_parameters(role, engine)
        except ImportError as exc:
            raise self.fail(key, f"cannot import the {role} engine {brief(engine)} to check its options: {exc}") from None
        open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
        params = {k: p for k, p in params.items() if p.kind != p.VAR_KEYWORD}
        unknown = [] if open_ended else sorted(set(options) - set(params))
        if unknown:
            raise self.fail(key, f"unknown option(s) {brief(unknown)} for the {role} engine {brief(engine)}; valid: {sorted(params)}")
        for name, val in options.items():
            if name == "device":
                self.device(f"{key}.device", val)
                continue
            if name not in params:
                continue  # taken by the factory's **kwargs: its own business
            problem = _type_problem(params[name].default, val)
            if problem:
                raise self.fail(f"{key}.{name}", problem)

    def calibrate_from(self, value: Any, writer: str | LlmWriter) -> Any:
        if value is None:
            return None
        if isinstance(writer, LlmWriter):
            raise self.fail("calibrate_from", "calibrates the offline report writer; it cannot steer an LLM writer")
        from synthesis_bank.calibration import parse_spec

        return parse_spec(value, base=self.base, origin=self.origin)

    def label_scheme(self, value: Any) -> dict[str, int]:
        """Role-keyed scheme ({background, organ, lesion, ignore} -> id); the names may be the target's own
        (`{background: 0, liver: 1, cancer: 2}`), see `label_names`."""
        from synthesis_bank.label_mapping import bank_roles

        if not isinstance(value, Mapping):
            raise self.fail("label_scheme", f"expected {{background: 0, organ: 1, lesion: 2}}, got {brief(value)}")
        if value.get("background") != 0 or len(value) < 2:
            raise self.fail("label_scheme", f"needs background: 0 and a lesion label, got {brief(dict(value))}")
        try:
            roles = bank_roles(value, origin=f"{self.origin}: label_scheme")
        except ConfigError as exc:
            raise ConfigError(str(exc)) from None
        ids = [self.non_negative_int(f"label_scheme.{k}", v) for k, v in value.items()]
        if sorted(ids) != list(range(len(ids))):
            raise self.fail("label_scheme", f"label ids must be distinct and consecutive from 0 (nnU-Net), got {brief(dict(value))}")
        if "ignore" in value and value["ignore"] != max(ids):
            raise self.fail("label_scheme", f"the ignore label must be the highest id (nnU-Net), got {brief(dict(value))}")
        return {roles[k]: v for k, v in sorted(value.items(), key=lambda kv: kv[1])}

    def label_names(self, value: Any) -> dict[str, str]:
        """role -> the name the bank's dataset.json gives it (the recipe's own names)."""
        from synthesis_bank.label_mapping import bank_roles

        return {role: name for name, role in bank_roles(value).items()}

    def spacing(self, value: Any) -> tuple[float, float, float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
        ):
            raise self.fail("spacing", f"expected three positive numbers (mm), got {brief(value)}")
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    def dataset_name(self, value: Any) -> str:
        name = self.string("dataset_name", value)
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise self.fail("dataset_name", f"use letters, digits, '_' or '-' (an nnU-Net dataset name), got {brief(name)}")
        return name

    def dataset_id(self, value: Any) -> int | None:
        if value is None:
            return None
        if self._int("dataset_id", value) < 1 or value > 999:
            raise self.fail("dataset_id", f"nnU-Net dataset ids are 1..999, got {value}")
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_problem(default: Any, value: Any) -> str | None:
    """Why `value` cannot stand in for an option whose default is `default` (None: fine or not judgeable)."""
    import inspect

    if default is inspect.Parameter.empty or default is None:
        return None  # required or optional-path options: judged by the engine itself
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif isinstance(default, float):
        ok = _is_number(value)
        want = "a number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        want = "a string"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(_is_number(v) for v in value)
        want = f"a list of {len(default)} numbers"
    else:
        return None
    return None if ok else f"expected {want} (default {brief(default)}), got {brief(value)}"
