"""Per-case and per-lesion metric rows from one prediction (numpy/scipy only).

Lesions are connected components (26-connectivity) of the lesion target's voxels. Matching rule: a reference
lesion is detected when a predicted lesion overlaps it by at least one voxel; a predicted lesion is a true
positive when it overlaps a reference lesion, else a false positive. A lesion's size is its
equivalent-sphere diameter in mm. A predicted lesion's score is the highest lesion probability inside it (1.0
without probabilities), which orders predicted lesions for the FROC curve; a reference lesion's score is the
highest score of the predicted lesions that detect it (0 when missed).

HD95 and NSD are written here with scipy's Euclidean distance transform rather than taken from a package:
the maintained implementations (MONAI, medpy) are large or unmaintained dependencies for two formulas. HD95
follows medpy's `hd95`: the larger of the two directed 95th percentiles of surface distances.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

SIZE_BINS_MM = (10.0, 20.0)
CONNECTIVITY = 3
NSD_TOLERANCE_MM = 2.0


def size_bin(diameter_mm: float, bins: Sequence[float] = SIZE_BINS_MM) -> str:
    edges = [f"{b:g}" for b in bins]
    names = [f"<{edges[0]}mm"] + [f"{a}-{b}mm" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]}mm"]
    return names[int(np.searchsorted(bins, diameter_mm, side="right"))]


def size_bin_names(bins: Sequence[float] = SIZE_BINS_MM) -> list[str]:
    return [size_bin(x, bins) for x in [bins[0] / 2, *[(a + b) / 2 for a, b in zip(bins, bins[1:])], bins[-1] * 2]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice; NaN when both are empty (nnU-Net's convention: nothing to find, nothing found)."""
    total = int(a.sum()) + int(b.sum())
    return math.nan if total == 0 else 2.0 * int((a & b).sum()) / total


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm; NaN when either mask is empty (undefined)."""
    if not pred.any() or not ref.any():
        return math.nan
    d_pr, d_rp = _surface_distances(pred, ref, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalized surface Dice: the share of both surfaces within `tolerance_mm` of the other."""
    if not pred.any() and not ref.any():
        return math.nan
    if not pred.any() or not ref.any():
        return 0.0
    d_pr, d_rp = _surface_distances(pred, ref, spacing)
    return float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (d_pr.size + d_rp.size))


def _diameters(cc: np.ndarray, n: int, spacing: Sequence[float]) -> np.ndarray:
    sizes = np.bincount(cc.ravel(), minlength=n + 1)[1:]
    return np.cbrt(6.0 * sizes * float(np.prod(spacing)) / np.pi)


def case_rows(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], lesion_values: Sequence[int],
              label_defs: Mapping[str, Sequence[int]], prob: np.ndarray | None = None) -> list[tuple[str, str, float]]:
    """(lesion, metric, value) rows for one case: lesion "" = the case, "r<k>" = reference lesion k,
    "p<k>" = predicted lesion k."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    rows: list[tuple[str, str, float]] = []
    for name, values in label_defs.items():
        if tuple(sorted(values)) == tuple(sorted(lesion_values)):
            continue                      # the lesion target itself: dice_lesion below
        metric = "dice_label_lesion" if name == "lesion" else f"dice_{name}"
        rows.append(("", metric, dice(np.isin(pred, values), np.isin(ref, values))))
    p, r = np.isin(pred, lesion_values), np.isin(ref, lesion_values)
    rows += [("", "dice_lesion", dice(p, r)), ("", "hd95_lesion", hd95(p, r, spacing)),
             ("", "nsd_lesion", nsd(p, r, spacing))]
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY)
    ref_cc, n_ref = ndimage.label(r, structure)
    pred_cc, n_pred = ndimage.label(p, structure)
    score = (ndimage.maximum(prob, pred_cc, np.arange(1, n_pred + 1)) if prob is not None and n_pred
             else np.ones(n_pred))
    score = np.asarray(score, dtype=float).reshape(-1)
    # overlap table: which predicted components touch which reference lesions
    both = (ref_cc > 0) & (pred_cc > 0)
    pairs = set(zip(ref_cc[both].tolist(), pred_cc[both].tolist()))
    pred_tp = np.zeros(n_pred, bool)
    for _, j in pairs:
        pred_tp[j - 1] = True
    for k, d in enumerate(_diameters(ref_cc, n_ref, spacing), start=1):
        hits = [j for i, j in pairs if i == k]
        lesion = ref_cc == k
        matched = np.isin(pred_cc, hits) if hits else np.zeros_like(lesion)
        rows += [(f"r{k}", "diameter_mm", float(d)), (f"r{k}", "detected", float(bool(hits))),
                 (f"r{k}", "lesion_dice", dice(matched, lesion)),
                 (f"r{k}", "detect_score", float(max(score[j - 1] for j in hits)) if hits else 0.0)]
    for j, d in enumerate(_diameters(pred_cc, n_pred, spacing), start=1):
        rows += [(f"p{j}", "diameter_mm", float(d)), (f"p{j}", "tp", float(pred_tp[j - 1])),
                 (f"p{j}", "score", float(score[j - 1]))]
    rows += [("", "n_ref_lesions", float(n_ref)), ("", "n_pred_lesions", float(n_pred)),
             ("", "fp_lesions", float(n_pred - pred_tp.sum())),
             ("", "precision", float(pred_tp.sum() / n_pred) if n_pred else math.nan),
             ("", "patient_ref", float(n_ref > 0)), ("", "patient_pred", float(n_pred > 0))]
    return rows


def lesion_probability(probabilities: np.ndarray, lesion_values: Sequence[int],
                       regions: Sequence[Sequence[int]] | None) -> np.ndarray | None:
    """The lesion target's probability map from nnU-Net's saved probabilities (channel first).

    Label-based training: softmax channels are label values, so P(lesion) sums the lesion values' channels.
    Region-based: sigmoid channels follow the regions; the region equal to the lesion values, else the
    largest over regions inside them; None when no region fits (scores then fall back to 1.0).
    """
    if regions is None:
        return probabilities[list(lesion_values)].sum(0)
    target = set(lesion_values)
    exact = [i for i, reg in enumerate(regions) if set(reg) == target]
    if exact:
        return probabilities[exact[0]]
    inside = [i for i, reg in enumerate(regions) if set(reg) <= target]
    return probabilities[inside].max(0) if inside else None
