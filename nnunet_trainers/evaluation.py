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


def detection_on_folder(pred_dir: str | Path, ref_dir: str | Path, lesion_labels: int | Sequence[int], *,
                        file_ending: str = ".nii.gz", min_overlap: float = 0.0) -> tuple[LesionCounts, dict]:
    """Sum lesion counts over the reference cases; a case without prediction is an error, not a skip."""
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
        per_case[ref_file.name] = asdict(counts)
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
    return metrics
