"""Test-set evaluation for gain benchmarks: nnU-Net's Dice plus lesion-wise detection.

Synthetic lesions are meant to help find lesions, which voxel Dice hides (one big lesion outweighs many small
missed ones), so lesions are also counted as connected components: a reference lesion is detected when a
predicted lesion overlaps it, a predicted lesion is a true positive when it overlaps a reference lesion.
The detection part is numpy/scipy only; `evaluate_predictions` adds nnU-Net's `compute_metrics_on_folder2`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ld_augment.io.atomic import atomic_write_json


@dataclass
class LesionCounts:
    n_ref: int = 0          # reference lesions
    detected: int = 0       # reference lesions overlapped by a prediction
    n_pred: int = 0         # predicted lesions
    true_pred: int = 0      # predicted lesions overlapping a reference lesion

    def __add__(self, other: "LesionCounts") -> "LesionCounts":
        return LesionCounts(self.n_ref + other.n_ref, self.detected + other.detected,
                            self.n_pred + other.n_pred, self.true_pred + other.true_pred)

    @property
    def sensitivity(self) -> float:
        return self.detected / self.n_ref if self.n_ref else math.nan

    @property
    def precision(self) -> float:
        return self.true_pred / self.n_pred if self.n_pred else math.nan

    @property
    def f1(self) -> float:
        s, p = self.sensitivity, self.precision
        return 2 * s * p / (s + p) if s + p > 0 else (0.0 if not (math.isnan(s) or math.isnan(p)) else math.nan)


def _matched(components: np.ndarray, n: int, other: np.ndarray, min_overlap: float) -> int:
    """How many of the `n` labelled components overlap `other` by more than `min_overlap` of their volume."""
    if n == 0:
        return 0
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    hits = np.bincount(components[other].ravel(), minlength=n + 1)[1:]
    return int(np.sum((hits > 0) & (hits / np.maximum(sizes, 1) > min_overlap)))


def lesion_detection(pred: np.ndarray, ref: np.ndarray, lesion_labels: int | Sequence[int], *,
                     min_overlap: float = 0.0, connectivity: int = 3) -> LesionCounts:
    """Lesion-wise counts for one case. `connectivity` 1/2/3 = face/edge/corner neighbours (3D)."""
    labels = [lesion_labels] if isinstance(lesion_labels, (int, np.integer)) else list(lesion_labels)
    p, r = np.isin(pred, labels), np.isin(ref, labels)
    structure = ndimage.generate_binary_structure(r.ndim, connectivity)
    ref_cc, n_ref = ndimage.label(r, structure)
    pred_cc, n_pred = ndimage.label(p, structure)
    return LesionCounts(n_ref, _matched(ref_cc, n_ref, p, min_overlap), n_pred,
                        _matched(pred_cc, n_pred, r, min_overlap))


SIZE_BINS_MM = (10.0, 20.0)    # reference lesions by equivalent-sphere diameter: < 10, 10-20, > 20 mm


def size_bin_names(bins: Sequence[float] = SIZE_BINS_MM) -> list[str]:
    edges = [f"{b:g}" for b in bins]
    return [f"<{edges[0]}mm"] + [f"{a}-{b}mm" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]}mm"]


def detection_by_size(pred: np.ndarray, ref: np.ndarray, lesion_labels: int | Sequence[int],
                      spacing: Sequence[float], *, bins: Sequence[float] = SIZE_BINS_MM,
                      connectivity: int = 3) -> dict[str, list[int]]:
    """{bin: [reference lesions, detected]} with lesions binned by equivalent-sphere diameter in mm (small
    lesions are where synthetic data is expected to help, and where Dice says least)."""
    labels = [lesion_labels] if isinstance(lesion_labels, (int, np.integer)) else list(lesion_labels)
    p, r = np.isin(pred, labels), np.isin(ref, labels)
    ref_cc, n_ref = ndimage.label(r, ndimage.generate_binary_structure(r.ndim, connectivity))
    out = {name: [0, 0] for name in size_bin_names(bins)}
    if n_ref == 0:
        return out
    voxel = float(np.prod(spacing))
    sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)[1:]
    hits = np.bincount(ref_cc[p].ravel(), minlength=n_ref + 1)[1:]
    diameters = np.cbrt(6.0 * sizes * voxel / np.pi)
    names = size_bin_names(bins)
    for d, hit in zip(diameters, hits):
        name = names[int(np.searchsorted(bins, d, side="right"))]
        out[name][0] += 1
        out[name][1] += int(hit > 0)
    return out


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalized surface Dice (NSD): the share of both surfaces within `tolerance_mm` of the other surface.

    Written here (scipy distance transforms) rather than taken from a package: the maintained implementations
    (e.g. MONAI's compute_surface_dice) would add a large dependency for one metric.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() and not ref.any():
        return math.nan
    if not pred.any() or not ref.any():
        return 0.0
    def border(m):
        return m & ~ndimage.binary_erosion(m)
    bp, br = border(pred), border(ref)
    dist_to_ref = ndimage.distance_transform_edt(~br, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~bp, sampling=spacing)
    close = (dist_to_ref[bp] <= tolerance_mm).sum() + (dist_to_pred[br] <= tolerance_mm).sum()
    return float(close / (bp.sum() + br.sum()))


def detection_on_folder(pred_dir: str | Path, ref_dir: str | Path, lesion_labels: int | Sequence[int], *,
                        file_ending: str = ".nii.gz", min_overlap: float = 0.0,
                        nsd_tolerance_mm: float = 2.0) -> tuple[LesionCounts, dict]:
    """Sum lesion counts over the reference cases; a case without prediction is an error, not a skip.
    Per case also: detection by lesion size, false-positive lesions and the lesion NSD."""
    import nibabel as nib

    total, per_case = LesionCounts(), {}
    refs = sorted(p for p in Path(ref_dir).iterdir() if p.name.endswith(file_ending))
    if not refs:
        raise FileNotFoundError(f"{ref_dir}: no reference files ending in {file_ending}")
    for ref_file in refs:
        pred_file = Path(pred_dir) / ref_file.name
        if not pred_file.is_file():
            raise FileNotFoundError(f"{pred_file}: prediction missing for reference {ref_file}")
        ref = np.asarray(nib.load(str(ref_file)).dataobj)
        pred = np.asarray(nib.load(str(pred_file)).dataobj)
        counts = lesion_detection(pred, ref, lesion_labels, min_overlap=min_overlap)
        spacing = [float(z) for z in nib.load(str(ref_file)).header.get_zooms()[:ref.ndim]]
        labels = [lesion_labels] if isinstance(lesion_labels, (int, np.integer)) else list(lesion_labels)
        per_case[ref_file.name] = dict(
            asdict(counts), false_positives=counts.n_pred - counts.true_pred,
            by_size=detection_by_size(pred, ref, lesion_labels, spacing),
            nsd=surface_dice(np.isin(pred, labels), np.isin(ref, labels), spacing, nsd_tolerance_mm))
        total = total + counts
    return total, per_case


def evaluate_predictions(pred_dir: str | Path, ref_dir: str | Path, dataset_json_file: str | Path,
                         plans_file: str | Path, lesion_labels: Iterable[int], *, num_processes: int = 1,
                         min_overlap: float = 0.0) -> dict:
    """nnU-Net's per-label Dice (`compute_metrics_on_folder2`) plus lesion detection, written to
    `<pred_dir>/summary.json` and `<pred_dir>/lesion_detection.json`; returns a flat dict of metrics."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    pred_dir = Path(pred_dir)
    dataset_json = json.loads(Path(dataset_json_file).read_text())
    compute_metrics_on_folder2(str(ref_dir), str(pred_dir), str(dataset_json_file), str(plans_file),
                               str(pred_dir / "summary.json"), num_processes=num_processes, chill=False)
    summary = json.loads((pred_dir / "summary.json").read_text())   # the function itself returns None
    counts, per_case = detection_on_folder(pred_dir, ref_dir, list(lesion_labels),
                                           file_ending=dataset_json["file_ending"], min_overlap=min_overlap)
    atomic_write_json(pred_dir / "lesion_detection.json", {"total": asdict(counts), "cases": per_case})
    names = {str(v): k for k, v in dataset_json["labels"].items() if not isinstance(v, (list, tuple))}
    metrics = {f"dice_{names.get(str(k), k)}": float(v["Dice"]) for k, v in summary["mean"].items()}
    metrics["dice_foreground_mean"] = float(summary["foreground_mean"]["Dice"])
    metrics.update(lesion_sensitivity=counts.sensitivity, lesion_precision=counts.precision, lesion_f1=counts.f1,
                   n_ref_lesions=counts.n_ref, n_pred_lesions=counts.n_pred)
    metrics.update(summarize_cases(per_case))
    return metrics


def summarize_cases(per_case: dict) -> dict:
    """False positives per case, mean lesion NSD and sensitivity per size bin, from detection_on_folder's cases."""
    cases = list(per_case.values())
    nsd = [c["nsd"] for c in cases if not math.isnan(c["nsd"])]
    out = {"lesion_fp_per_case": sum(c["false_positives"] for c in cases) / len(cases) if cases else math.nan,
           "nsd_lesion": sum(nsd) / len(nsd) if nsd else math.nan}
    for name in size_bin_names():
        n = sum(c["by_size"][name][0] for c in cases)
        hit = sum(c["by_size"][name][1] for c in cases)
        out[f"sens_{name}"] = hit / n if n else math.nan
        out[f"n_ref_{name}"] = n
    return out
