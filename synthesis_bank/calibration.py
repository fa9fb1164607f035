"""The recipe's ``calibrate_from``: measure the user's real lesions once per build and hand them to the writer.

```yaml
calibrate_from: ../nnUNet_raw/Dataset003_Liver    # a labelled nnU-Net raw dataset (or an LIDC nodule folder)
# or, to say which labels and what they are:
calibrate_from: {dataset: ../Dataset003_Liver, lesion_label: tumor, organ_label: liver,
                 organ: liver, lesion_type: hepatocellular carcinoma, spacing: 1.0, max_cases: 200}
```

Without ``organ``/``lesion_type`` the real lesions calibrate every organ and type of the recipe (key ``*|*``).
The measurement (``ld_augment.evaluation``) runs on the ``spacing`` grid (default: the recipe's).

A measured core already carries its scan's blur (and a thick slice's partial volume), which ``write_back``
renders again under a lung lesion's label; each lesion therefore also records the share of its contrast that
blur leaves in its core (:func:`core_kept_share`), and the writer sets a lung lesion's tissue from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ld_augment.errors import ConfigError

#: Slice thickness (mm) above which a real lesion's blurred core is only partly corrected (``core_kept_share``
#: models the slice as a Gaussian on the label, and a thick slice's label overreaches the lesion along z:
#: balls of 20 HU imaged with 4 mm slices come back -230 to -340 HU, with 1 mm slices 10-20 HU).
THICK_SLICE_MM = 2.0
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


def core_kept_share(lesion: np.ndarray, grid: Sequence[float], source_affine: np.ndarray,
                    paint_spacing: Sequence[float], floor_mm: float) -> float:
    """The share of a real lesion's contrast its scan left in its core (median over ``core_mask``, the core
    ``measure_lesion`` reads), as the writer's blur model gives it: per world axis a
    Gaussian of the source voxel's extent beyond the grid the engine paints on (``paint_spacing``), at least
    ``floor_mm`` (``write_back.source_voxel_average``), applied to the lesion's mask on the measurement ``grid``
    (RAS, ``to_common_spacing``). Thin slices: the floor alone (a 6-9 mm LIDC nodule keeps ~0.96 under 1.85 mm);
    a 2.5 mm slice adds its partial volume along z.

    Kept here rather than in ``ld_augment.evaluation``: it models what the writer renders, and a comparison of
    synthetic with real lesions must not see it (a classifier would read the source grid off it)."""
    from ld_augment.evaluation.lesion_features import core_mask, signed_distance_mm

    g = np.asarray([float(s) for s in grid], dtype=np.float64)
    paint = np.asarray([float(s) for s in paint_spacing], dtype=np.float64)
    source = np.abs(np.asarray(source_affine, dtype=np.float64)[:3, :3]).sum(axis=1)  # extent along each RAS axis
    seen = np.maximum(source, g)  # the measurement saw the coarser of the source voxel and its own
    fwhm = np.maximum(np.sqrt(np.clip(seen**2 - paint**2, 0.0, None)), float(floor_mm))
    sigma = fwhm / 2.355 / g
    pad = [int(np.ceil(3 * s)) + 1 for s in sigma]
    found = ndimage.find_objects(np.asarray(lesion, dtype=np.uint8))[0]
    mask = np.pad(np.asarray(lesion, dtype=bool)[found], [(p, p) for p in pad])
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    return float(np.median(blurred[core_mask(mask, signed_distance_mm(mask, g))]))


def kept_share_hook(paint_spacing: Sequence[float]) -> Any:
    """The loaders' per-lesion hook (``evaluation.datasets.LesionHook``) adding ``core_kept_share`` under the
    blur ``write_back`` renders under a lung nodule painted on ``paint_spacing`` (``LUNG_EDGE_FWHM_MM``, the
    procedural engine's) and ``source_spacing_mm`` (the source voxel's longest side)."""
    from ld_augment.pipeline.synthesize import LUNG_EDGE_FWHM_MM

    paint = tuple(float(s) for s in paint_spacing)

    def hook(ct: Any, lesion: np.ndarray, organ: Any, grid: Sequence[float], source_affine: np.ndarray) -> dict:
        return {"core_kept_share": core_kept_share(lesion, grid, source_affine, paint, LUNG_EDGE_FWHM_MM),
                "source_spacing_mm": float(np.abs(source_affine[:3, :3]).sum(axis=1).max())}

    return hook


def measure(spec: CalibrationSpec, spacing: Sequence[float], *, seed: int = 0) -> dict[str, list[dict[str, float]]]:
    """Real lesions as {"organ|lesion type": [{diameter_mm, core_hu, ...}]} for CalibratedReportWriter.

    ``spacing`` is the grid the engine paints on (the recipe's); each lesion also carries what
    :func:`kept_share_hook` adds."""
    from ld_augment.evaluation.datasets import load_lidc, load_nnunet_raw
    from ld_augment.reports.calibrated import WILDCARD, calibration_key

    grid = spec.spacing or tuple(float(s) for s in spacing)
    kept = kept_share_hook(spacing)

    if (spec.dataset / "metadata.csv").is_file() and not (spec.dataset / "dataset.json").is_file():
        real = load_lidc(spec.dataset, grid, limit=spec.max_cases, seed=seed, negatives_per_case=0, extra=kept)
        organ, lesion_type = spec.organ or "lung", spec.lesion_type or "lung nodule"
    else:
        from ld_augment.evaluation.datasets import dataset_cases, read_dataset_json

        cases = None
        if spec.max_cases is not None:
            cases = [c for c, _, _ in dataset_cases(spec.dataset, read_dataset_json(spec.dataset))][: spec.max_cases]
        real = load_nnunet_raw(spec.dataset, grid, lesion_labels=spec.lesion_labels or None,
                               organ_labels=spec.organ_labels or None, cases=cases, negatives_per_case=0, seed=seed,
                               extra=kept)
        organ, lesion_type = spec.organ or WILDCARD, spec.lesion_type or WILDCARD
    if not real.rows:
        raise ConfigError(f"calibrate_from: no lesion found in {spec.dataset}")
    rows = [{"diameter_mm": r["equivalent_diameter_mm"], "core_hu": r["core_hu"], "contrast_hu": r["contrast_hu"],
             "margin_width_mm": r["margin_width_mm"], "heterogeneity_ratio": r["heterogeneity_ratio"],
             "sphericity": r["sphericity"], "convexity": r["convexity"], "core_kept_share": r["core_kept_share"],
             "source_spacing_mm": r["source_spacing_mm"]} for r in real.rows]
    return {calibration_key(organ, lesion_type): rows}


def make_writer(spec: CalibrationSpec, spacing: Sequence[float], *, seed: int = 0) -> Any:
    """The calibrated report writer of a recipe (measures the real lesions now: seconds to a few minutes)."""
    from ld_augment.reports.calibrated import CalibratedReportWriter

    grid = spec.spacing or tuple(float(s) for s in spacing)
    lesions = measure(spec, spacing, seed=seed)
    rows = [r for group in lesions.values() for r in group]
    thick = [r for r in rows if r["source_spacing_mm"] > THICK_SLICE_MM]
    if thick:
        logging.getLogger("synthesis_bank").warning(
            "calibrate_from %s: %d of %d real lesions come from slices thicker than %g mm (up to %g mm); their "
            "cores are corrected for the slice's blur only in part, so lung tissue drawn from them comes out low "
            "(LIDC 6-9 mm nodules: about -170 HU from >= 2 mm slices, -16 HU from thin ones)", spec.dataset,
            len(thick), len(rows), THICK_SLICE_MM, max(r["source_spacing_mm"] for r in thick))
    # an edge is "ill-defined" when wider than ~1.5 voxels of the grid it was measured on (a sharp edge is ~1)
    return CalibratedReportWriter(lesions, source=str(spec.dataset),
                                  ill_margin_mm=max(3.0, 1.5 * max(grid)), spacing=tuple(float(s) for s in spacing))
