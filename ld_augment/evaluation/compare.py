"""Telling synthetic lesions from real ones: per-feature distributions, distances and classifier two-sample tests.

Three questions, each with its own control:

* Does each feature's synthetic distribution sit where the real one does? (medians, IQRs, a standardized
  Wasserstein distance and the KS statistic per feature.)
* Can a classifier tell the two sets apart from all features at once? (cross-validated AUC of a logistic
  regression and a random forest; 0.5 = indistinguishable. The same pipeline on shuffled labels is the
  control and must come out near 0.5, else the test itself is broken.)
* Would a detector trained on the synthetic lesions find the real ones? (train on synthetic lesion vs
  lesion-free patches, score real lesion vs lesion-free patches: AUC; a detector trained on real patches
  by cross-validation is the ceiling.)

Below ``MIN_REAL`` real lesions the verdict is "too few real lesions to conclude".
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ld_augment.evaluation.lesion_features import FEATURES
from ld_augment.evaluation.patches import descriptor

#: Fewest real (and synthetic) lesions a comparison concludes from.
MIN_REAL = 10
MIN_SYNTHETIC = 5
#: Features describing the scan, not the lesion: left out of the classifier (they would detect the scanner).
SCAN_FEATURES = ("parenchyma_hu",)
#: Features that hold a scan feature: core_hu = parenchyma_hu + contrast_hu, so a classifier given core and
#: contrast reads the parenchyma back and detects the scan again (synthetic nodules on the shared CT's denser
#: lung bases vs LIDC: core and contrast together tell them apart at AUC 0.72 / 0.75, parenchyma alone at
#: 0.71 / 0.72, core or contrast alone at 0.50-0.57). The classifier keeps the contrast, the lesion's relation
#: to its organ (a core's absolute HU also carries the scan's contrast phase); the feature table shows both.
SCAN_DERIVED = ("core_hu",)
#: Features that read how a label is drawn more than the lesion: a real set contoured generously (LIDC's consensus
#: masks: a median 16 % of mask voxels below -600 HU) differs in them from a bank labelled at half contrast (the
#: quality gate's "label = visible extent") whatever the lesions look like. The AUC is also given without them.
LABEL_CONVENTION = ("label_below_half_fraction", "visible_diameter_ratio")


def _values(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    vals = np.asarray([float(r.get(name, math.nan)) for r in rows], dtype=np.float64)
    return vals[np.isfinite(vals)]


def _quartiles(v: np.ndarray) -> tuple[float, float, float]:
    if v.size == 0:
        return math.nan, math.nan, math.nan
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def feature_table(synthetic: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]],
                  features: Sequence[str] = FEATURES) -> list[dict[str, Any]]:
    """Per feature: both sets' median and IQR, whether the synthetic median lies inside the real IQR, the
    Wasserstein distance in units of the real IQR (scale-free), and the KS statistic and p-value."""
    from scipy.stats import ks_2samp, wasserstein_distance

    out = []
    for name in features:
        s, r = _values(synthetic, name), _values(real, name)
        s25, s50, s75 = _quartiles(s)
        r25, r50, r75 = _quartiles(r)
        row: dict[str, Any] = {"feature": name, "n_synthetic": int(s.size), "n_real": int(r.size),
                               "synthetic_median": s50, "synthetic_q25": s25, "synthetic_q75": s75,
                               "real_median": r50, "real_q25": r25, "real_q75": r75,
                               "inside_real_iqr": bool(r25 <= s50 <= r75) if s.size and r.size else None,
                               "wasserstein_iqr": math.nan, "ks": math.nan, "ks_p": math.nan}
        if s.size >= 2 and r.size >= 2:
            scale = (r75 - r25) or float(np.std(r)) or 1.0
            row["wasserstein_iqr"] = float(wasserstein_distance(s, r) / scale)
            ks = ks_2samp(s, r)
            row["ks"], row["ks_p"] = float(ks.statistic), float(ks.pvalue)
        out.append(row)
    return out


def classifier_features(synthetic: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]],
                        features: Sequence[str] = FEATURES) -> list[str]:
    """Lesion features measured on both sides, without scan descriptors or, where the contrast is measured, what
    would give them back (SCAN_DERIVED)."""
    names = [f for f in features if f not in SCAN_FEATURES and _values(synthetic, f).size and _values(real, f).size]
    if "contrast_hu" in names:
        names = [f for f in names if f not in SCAN_DERIVED]
    return names


def _matrix(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    return np.asarray([[float(r.get(n, math.nan)) for n in names] for r in rows], dtype=np.float64)


def _models(seed: int) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic": make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                  LogisticRegression(max_iter=2000, class_weight="balanced")),
        "random_forest": make_pipeline(SimpleImputer(strategy="median"),
                                       RandomForestClassifier(n_estimators=100, min_samples_leaf=2,
                                                              class_weight="balanced", random_state=seed, n_jobs=1)),
    }


def cv_scores(x: np.ndarray, y: np.ndarray, model: Any, seed: int, folds: int = 5) -> np.ndarray:
    """Stratified cross-validated out-of-fold scores (probability of class 1)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    minority = int(min(np.sum(y == 0), np.sum(y == 1)))
    k = max(2, min(folds, minority))
    scores = np.zeros(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y):
        fitted = clone(model).fit(x[train], y[train])
        scores[test] = fitted.predict_proba(x[test])[:, 1]
    return scores


def cv_auc(x: np.ndarray, y: np.ndarray, model: Any, seed: int, folds: int = 5) -> float:
    """Stratified cross-validated ROC AUC (out-of-fold scores pooled)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, cv_scores(x, y, model, seed, folds)))


#: Bootstrap resamples behind an AUC's interval.
AUC_BOOTSTRAP = 1000


def auc_interval(y: np.ndarray, scores: np.ndarray, seed: int, level: float = 0.95,
                 n: int = AUC_BOOTSTRAP) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC of fixed out-of-fold ``scores``, each class resampled on its own.

    With 40 synthetic lesions against 600 real ones the AUC moves by about +-0.05 from one set of 40 to the next
    (bench_lidc_compare, seeds 0-3: forest 0.68-0.81); the interval says so beside the number. It covers the
    lesions' sampling, not the refitting of the models (a lower bound on the spread)."""
    from scipy.stats import rankdata

    # the Mann-Whitney form of the AUC (= sklearn's roc_auc_score, ties averaged) on all resamples at once:
    # 1000 calls of roc_auc_score cost ~1.5 s per model, this a few milliseconds
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.hstack([rng.choice(pos, (n, pos.size)), rng.choice(neg, (n, neg.size))])
    ranks = rankdata(scores[idx], axis=1)
    values = (ranks[:, :pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def two_sample_auc(synthetic: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]],
                   features: Sequence[str] | None = None, *, seed: int = 0, max_per_class: int = 600) -> dict[str, Any]:
    """How well lesion features tell synthetic (1) from real (0): cross-validated AUC per model with its 95 %
    bootstrap interval (``interval``), plus the same random forest on shuffled labels (the control, ~0.5). Each
    class is subsampled to ``max_per_class``."""
    from sklearn.metrics import roc_auc_score

    names = list(features) if features is not None else classifier_features(synthetic, real)
    rng = np.random.default_rng(seed)
    syn = list(synthetic)
    rea = list(real)
    if len(syn) > max_per_class:
        syn = [syn[i] for i in sorted(rng.choice(len(syn), max_per_class, replace=False))]
    if len(rea) > max_per_class:
        rea = [rea[i] for i in sorted(rng.choice(len(rea), max_per_class, replace=False))]
    out: dict[str, Any] = {"features": names, "n_synthetic": len(syn), "n_real": len(rea)}
    if len(syn) < MIN_SYNTHETIC or len(rea) < MIN_REAL or not names:
        out["verdict"] = "too few lesions to conclude"
        return out
    x = np.vstack([_matrix(syn, names), _matrix(rea, names)])
    y = np.r_[np.ones(len(syn), int), np.zeros(len(rea), int)]
    out["interval"] = {}
    for label, model in _models(seed).items():
        scores = cv_scores(x, y, model, seed)
        out[label] = float(roc_auc_score(y, scores))
        out["interval"][label] = auc_interval(y, scores, seed)
    out["shuffled_control"] = cv_auc(x, rng.permutation(y), _models(seed)["random_forest"], seed)
    own = [i for i, n in enumerate(names) if n not in LABEL_CONVENTION]
    if own and len(own) < len(names):
        out["without_label_convention"] = {label: cv_auc(x[:, own], y, model, seed)
                                           for label, model in _models(seed).items()}
    out["per_feature_auc"] = per_feature_auc(x, y, names)
    return out


def per_feature_auc(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Each feature alone as a synthetic-vs-real score (missing values at the feature's median): which features
    give the synthetic lesions away, most telling first. 0.5 = no difference; below 0.5 = lower in synthetic."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, name in enumerate(names):
        col = x[:, j].copy()
        finite = np.isfinite(col)
        if finite.sum() < 2:
            continue
        col[~finite] = float(np.median(col[finite]))
        out[str(name)] = float(roc_auc_score(y, col))
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1] - 0.5)))


def _descriptors(patches: Sequence[np.ndarray], spacing: Sequence[float]) -> np.ndarray:
    return np.vstack([descriptor(p, spacing) for p in patches]) if len(patches) else np.zeros((0, 1))


def train_synthetic_test_real(syn_pos: Sequence[np.ndarray], syn_neg: Sequence[np.ndarray],
                              real_pos: Sequence[np.ndarray], real_neg: Sequence[np.ndarray],
                              spacing: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """A patch detector (random forest on rotation-invariant patch descriptors) trained on synthetic lesion vs
    lesion-free patches, scored on real ones (AUC). Without enough real lesion-free patches, half the synthetic
    set's lesion-free patches are held out and stand in for them (said in ``negatives``). The ceiling is the
    same detector cross-validated on the real patches themselves."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {"n_synthetic_lesion": len(syn_pos), "n_synthetic_free": len(syn_neg),
                           "n_real_lesion": len(real_pos), "n_real_free": len(real_neg)}
    if len(real_pos) < MIN_REAL or len(syn_pos) < MIN_SYNTHETIC or len(syn_neg) < MIN_SYNTHETIC:
        out["verdict"] = "too few lesions or lesion-free patches to conclude"
        return out
    sp = [float(s) for s in spacing]
    x_sp, x_sn, x_rp = (_descriptors(p, sp) for p in (syn_pos, syn_neg, real_pos))
    if len(real_neg) >= MIN_REAL:
        x_rn, train_neg = _descriptors(real_neg, sp), x_sn
        out["negatives"] = "real lesion-free patches"
    else:
        order = np.random.default_rng(seed).permutation(len(x_sn))
        half = len(order) // 2
        train_neg, x_rn = x_sn[order[:half]], x_sn[order[half:]]
        out["negatives"] = "held-out synthetic-set lesion-free patches (too few real ones)"
    model = _models(seed)["random_forest"]
    x = np.vstack([x_sp, train_neg])
    y = np.r_[np.ones(len(x_sp), int), np.zeros(len(train_neg), int)]
    fitted = model.fit(x, y)
    xt = np.vstack([x_rp, x_rn])
    yt = np.r_[np.ones(len(x_rp), int), np.zeros(len(x_rn), int)]
    out["auc"] = float(roc_auc_score(yt, fitted.predict_proba(xt)[:, 1]))
    if len(real_neg) >= MIN_REAL:
        out["real_ceiling_auc"] = cv_auc(np.vstack([x_rp, x_rn]), yt, _models(seed)["random_forest"], seed)
    return out


def effect(rows: Sequence[Mapping[str, Any]], feature: str, group_a: Any, group_b: Any) -> dict[str, Any]:
    """Median of ``feature`` in rows selected by predicate ``group_a`` minus that in ``group_b`` (an attribute's
    effect: e.g. spiculated minus smooth convexity), with the counts."""
    a = _values([r for r in rows if group_a(r)], feature)
    b = _values([r for r in rows if group_b(r)], feature)
    diff = float(np.median(a) - np.median(b)) if a.size and b.size else math.nan
    return {"feature": feature, "n_a": int(a.size), "n_b": int(b.size), "effect": diff}


#: Equivalent-diameter bands (mm) of a size-matched effect: LIDC's own size classes (<6 mm, 6-9, 9-13, >= 13).
SIZE_BANDS_MM = (6.0, 9.0, 13.0)


def size_band(row: Mapping[str, Any], bands: Sequence[float] = SIZE_BANDS_MM) -> int | None:
    """Index of the row's equivalent-diameter band (None without a size)."""
    d = float(row.get("equivalent_diameter_mm", math.nan))
    return int(np.searchsorted(np.asarray(bands, dtype=float), d, side="right")) if math.isfinite(d) else None


def stratified_effect(rows: Sequence[Mapping[str, Any]], feature: str, group_a: Any, group_b: Any,
                      stratum: Any = size_band, min_per_group: int = 2) -> dict[str, Any]:
    """An attribute's effect at matched size: the median difference a - b within each stratum (default: the
    size band), averaged with weights n_a n_b / (n_a + n_b). Why not ``effect``: margin width, convexity and
    core HU all change with size, and in real data the attributes come with sizes (LIDC's poorly defined
    nodules are larger than its sharp ones), so a raw difference mixes the attribute with the size. Strata
    with fewer than ``min_per_group`` rows in either group are left out (``n_strata`` says how many count)."""
    strata: dict[Any, tuple[list, list]] = {}
    for r in rows:
        key = stratum(r)
        if key is None:
            continue
        if group_a(r):
            strata.setdefault(key, ([], []))[0].append(r)
        elif group_b(r):
            strata.setdefault(key, ([], []))[1].append(r)
    total = weight = 0.0
    n_a = n_b = used = 0
    for rows_a, rows_b in strata.values():
        a, b = _values(rows_a, feature), _values(rows_b, feature)
        if a.size < min_per_group or b.size < min_per_group:
            continue
        w = a.size * b.size / (a.size + b.size)
        total += w * float(np.median(a) - np.median(b))
        weight += w
        n_a, n_b, used = n_a + int(a.size), n_b + int(b.size), used + 1
    return {"feature": feature, "n_a": n_a, "n_b": n_b, "n_strata": used,
            "effect": total / weight if weight else math.nan}


def paired_effect(rows: Sequence[Mapping[str, Any]], feature: str, group_a: Any, group_b: Any,
                  pair: Any) -> dict[str, Any]:
    """An attribute's effect in a designed experiment: the median of a - b over pairs of rows with the same
    ``pair(row)`` key (everything but the attribute: size, seed, the other words). Why not a difference of
    group medians: the other words move the feature far more than the attribute does (a spiculated nodule's
    margin width differs from a smooth one's by 2 mm where margin words move it by 0.2), so one missing row
    shifts a group's median by more than the effect."""
    a_rows: dict[Any, float] = {}
    b_rows: dict[Any, float] = {}
    for r in rows:
        value = float(r.get(feature, math.nan))
        if not math.isfinite(value):
            continue
        if group_a(r):
            a_rows[pair(r)] = value
        elif group_b(r):
            b_rows[pair(r)] = value
    diffs = [a_rows[k] - b_rows[k] for k in a_rows.keys() & b_rows.keys()]
    return {"feature": feature, "n_pairs": len(diffs), "effect": float(np.median(diffs)) if diffs else math.nan}
