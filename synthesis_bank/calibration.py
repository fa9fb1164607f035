"""The recipe's ``calibrate_from``: measure the user's real lesions once per build and hand them to the writer.

```yaml
calibrate_from: ../nnUNet_raw/Dataset003_Liver    # a labelled nnU-Net raw dataset (or an LIDC nodule folder)
# or, to say which labels and what they are:
calibrate_from: {dataset: ../Dataset003_Liver, lesion_label: tumor, organ_label: liver,
                 organ: liver, lesion_type: hepatocellular carcinoma, spacing: 1.0, max_cases: 200}
```

Without ``organ``/``lesion_type`` the real lesions calibrate every organ and type of the recipe (key ``*|*``).
The measurement (``ld_augment.evaluation``) runs on the ``spacing`` grid (default: the recipe's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ld_augment.errors import ConfigError

KEYS = ("dataset", "lesion_label", "organ_label", "organ", "lesion_type", "spacing", "max_cases")


@dataclass(frozen=True)
class CalibrationSpec:
    dataset: Path
    lesion_labels: tuple[str, ...] = ()
    organ_labels: tuple[str, ...] = ()
    organ: str | None = None
    lesion_type: str | None = None
    spacing: tuple[float, float, float] | None = None
    max_cases: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset), "lesion_label": list(self.lesion_labels),
                "organ_label": list(self.organ_labels), "organ": self.organ, "lesion_type": self.lesion_type,
                "spacing": list(self.spacing) if self.spacing else None, "max_cases": self.max_cases}


def parse_spec(value: Any, *, base: Path, origin: str) -> CalibrationSpec:
    """Validate the recipe value (a path or a mapping of KEYS); the dataset must exist and look labelled."""
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{origin}: 'calibrate_from': {problem}")

    if isinstance(value, (str, Path)):
        value = {"dataset": value}
    if not isinstance(value, Mapping) or "dataset" not in value:
        raise fail(f"expected a dataset path or {{dataset: PATH, ...}}, got {value!r}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise fail(f"unknown key(s) {unknown}; valid keys: {list(KEYS)}")
    path = Path(str(value["dataset"])).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_dir():
        raise fail(f"folder not found: {path}")
    if not (path / "dataset.json").is_file() and not (path / "metadata.csv").is_file():
        raise fail(f"{path} is neither a labelled nnU-Net raw dataset (dataset.json) nor an LIDC nodule folder")

    def names(key: str) -> tuple[str, ...]:
        raw = value.get(key)
        if raw is None:
            return ()
        raw = [raw] if isinstance(raw, str) else raw
        if not isinstance(raw, (list, tuple)) or not all(isinstance(n, str) and n for n in raw):
            raise fail(f"'{key}' must be a label name or a list of names, got {value.get(key)!r}")
        return tuple(raw)

    spacing = value.get("spacing")
    if spacing is not None:
        if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
            spacing = [spacing] * 3
        if (not isinstance(spacing, (list, tuple)) or len(spacing) != 3
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)):
            raise fail(f"'spacing' must be one or three positive numbers (mm), got {value.get('spacing')!r}")
        spacing = tuple(float(s) for s in spacing)
    max_cases = value.get("max_cases")
    if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1):
        raise fail(f"'max_cases' must be a positive integer, got {max_cases!r}")
    organ = value.get("organ")
    if organ is not None:
        from synthesis_bank import vocabulary

        try:
            organ = vocabulary.normalize_organ(str(organ))
        except ConfigError as exc:
            raise fail(str(exc)) from None
    lesion_type = value.get("lesion_type")
    return CalibrationSpec(dataset=path, lesion_labels=names("lesion_label"), organ_labels=names("organ_label"),
                           organ=organ, lesion_type=str(lesion_type) if lesion_type is not None else None,
                           spacing=spacing, max_cases=max_cases)  # type: ignore[arg-type]


def measure(spec: CalibrationSpec, spacing: Sequence[float], *, seed: int = 0) -> dict[str, list[dict[str, float]]]:
    """Real lesions as {"organ|lesion type": [{diameter_mm, core_hu, ...}]} for CalibratedReportWriter."""
    from ld_augment.evaluation.datasets import load_lidc, load_nnunet_raw
    from ld_augment.reports.calibrated import WILDCARD, calibration_key

    grid = spec.spacing or tuple(float(s) for s in spacing)
    if (spec.dataset / "metadata.csv").is_file() and not (spec.dataset / "dataset.json").is_file():
        real = load_lidc(spec.dataset, grid, limit=spec.max_cases, seed=seed, negatives_per_case=0)
        organ, lesion_type = spec.organ or "lung", spec.lesion_type or "lung nodule"
    else:
        from ld_augment.evaluation.datasets import dataset_cases, read_dataset_json

        cases = None
        if spec.max_cases is not None:
            cases = [c for c, _, _ in dataset_cases(spec.dataset, read_dataset_json(spec.dataset))][: spec.max_cases]
        real = load_nnunet_raw(spec.dataset, grid, lesion_labels=spec.lesion_labels or None,
                               organ_labels=spec.organ_labels or None, cases=cases, negatives_per_case=0, seed=seed)
        organ, lesion_type = spec.organ or WILDCARD, spec.lesion_type or WILDCARD
    if not real.rows:
        raise ConfigError(f"calibrate_from: no lesion found in {spec.dataset}")
    rows = [{"diameter_mm": r["equivalent_diameter_mm"], "core_hu": r["core_hu"], "contrast_hu": r["contrast_hu"],
             "margin_width_mm": r["margin_width_mm"], "heterogeneity_ratio": r["heterogeneity_ratio"],
             "sphericity": r["sphericity"], "convexity": r["convexity"]} for r in real.rows]
    return {calibration_key(organ, lesion_type): rows}


def make_writer(spec: CalibrationSpec, spacing: Sequence[float], *, seed: int = 0) -> Any:
    """The calibrated report writer of a recipe (measures the real lesions now: seconds to a few minutes)."""
    from ld_augment.reports.calibrated import CalibratedReportWriter

    grid = spec.spacing or tuple(float(s) for s in spacing)
    # an edge is "ill-defined" when wider than ~1.5 voxels of the grid it was measured on (a sharp edge is ~1)
    return CalibratedReportWriter(measure(spec, spacing, seed=seed), source=str(spec.dataset),
                                  ill_margin_mm=max(3.0, 1.5 * max(grid)), spacing=tuple(float(s) for s in spacing))
