"""Paired statistics for arm-vs-baseline comparisons: what a reviewer needs to read a gain.

Differences are paired: the mixed arm's value minus the baseline's value for the same test case (or the same
reference lesion), the same fold and the same seed. They are nested: clusters (test cases) hold units (the case
itself, or its lesions), units hold replicates (fold x seed runs that predicted them). Hence

* the estimate is the mean over units of each unit's mean replicate difference;
* the CI is a percentile bootstrap that resamples clusters, then units inside each drawn cluster, then
  replicates inside each drawn unit (hierarchical: lesions of one case and repeated seeds are not independent);
* the test is Wilcoxon's signed-rank test over the units when every unit is its own cluster (case metrics),
  and a cluster sign-flip permutation test otherwise (lesions of one case flip together);
* effect sizes: the mean paired difference, Cohen's dz (mean / SD of the per-cluster differences) and the
  matched-pairs rank-biserial correlation;
* below `MIN_CASES` test cases or `MIN_LESIONS` reference lesions the verdict is "too few ... to conclude" and
  nothing is called significant; a CI from fewer than 2 clusters, or of zero width, is never reported.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MIN_CASES = 10        # test cases below which no case-level comparison is concluded
MIN_LESIONS = 20      # reference lesions below which no lesion-level comparison is concluded
ALPHA = 0.05
N_BOOT = 4000
EXACT_PERMUTATION_MAX = 14   # clusters up to which all 2^n sign flips are enumerated

# {cluster (case): {unit (case or lesion): [replicate differences]}}
Nested = Mapping[str, Mapping[str, Sequence[float]]]


def _clean(nested: Nested) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for cluster, units in nested.items():
        kept = {}
        for unit, reps in units.items():
            arr = np.asarray([r for r in reps if r is not None and not math.isnan(r)], dtype=float)
            if arr.size:
                kept[unit] = arr
        if kept:
            out[cluster] = kept
    return out


def hierarchical_bootstrap(nested: Nested, *, n_boot: int = N_BOOT, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of the mean unit difference; None when fewer than 2 clusters (no spread to resample)."""
    data = _clean(nested)
    if len(data) < 2:
        return None
    rng = np.random.default_rng(seed)
    clusters = list(data.values())
    sums = np.empty((n_boot, len(clusters)))
    counts = np.array([len(c) for c in clusters], dtype=float)
    for j, units in enumerate(clusters):
        reps = list(units.values())
        r_max = max(len(r) for r in reps)
        table = np.full((len(reps), r_max), np.nan)
        for i, r in enumerate(reps):
            table[i, :len(r)] = r
        n_reps = np.array([len(r) for r in reps])
        pick_unit = rng.integers(0, len(reps), size=(n_boot, len(reps)))           # units within the cluster
        u = n_reps[pick_unit]                                                        # replicates of each drawn unit
        pick_rep = (rng.random((n_boot, len(reps), r_max)) * u[..., None]).astype(int)
        drawn = table[pick_unit[..., None], pick_rep]
        valid = np.arange(r_max)[None, None, :] < u[..., None]                        # draw as many as the unit has
        unit_means = np.where(valid, drawn, 0.0).sum(-1) / u
        sums[:, j] = unit_means.sum(-1)
    pick = rng.integers(0, len(clusters), size=(n_boot, len(clusters)))
    stats = sums[np.arange(n_boot)[:, None], pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def unit_means(nested: Nested) -> dict[str, dict[str, float]]:
    return {c: {u: float(r.mean()) for u, r in units.items()} for c, units in _clean(nested).items()}


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p (scipy); 1.0 when every difference is zero, NaN below 2 values."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def sign_flip_p(cluster_sums: Sequence[float], cluster_sizes: Sequence[int], *, n_perm: int = 20000,
                seed: int = 0) -> float:
    """Two-sided paired permutation p for the mean unit difference, flipping each cluster's signs together
    (exact enumeration up to EXACT_PERMUTATION_MAX clusters)."""
    s = np.asarray(cluster_sums, dtype=float)
    n = float(np.sum(cluster_sizes))
    if s.size < 2:
        return math.nan
    observed = abs(s.sum() / n)
    if observed == 0:
        return 1.0
    if s.size <= EXACT_PERMUTATION_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=s.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_perm, s.size))
    null = np.abs(signs @ s / n)
    return float(((null >= observed - 1e-12).sum() + (0 if s.size <= EXACT_PERMUTATION_MAX else 1))
                 / (len(signs) + (0 if s.size <= EXACT_PERMUTATION_MAX else 1)))


def cohens_dz(d: Sequence[float]) -> float:
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan
    sd = d.std(ddof=1)
    return math.nan if sd == 0 else float(d.mean() / sd)


def rank_biserial(d: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation: (R+ - R-) / (R+ + R-) over the non-zero differences."""
    from scipy.stats import rankdata

    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    ranks = rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    idx = [i for i in np.argsort(p) if not math.isnan(p[i])]
    out = np.full(p.shape, math.nan)
    running = 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - k) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass
class Comparison:
    metric: str
    level: str                  # "case" or "lesion"
    n_cases: int                # clusters with a paired value
    n_units: int                # units (cases or lesions) with a paired value
    base_mean: float
    arm_mean: float
    diff: float                 # mean paired difference (arm - baseline), over units
    ci: tuple[float, float] | None
    p: float
    dz: float
    rank_biserial: float
    minimum: int                # the stated minimum of n_cases (case level) or n_units (lesion level)
    higher_is_better: bool = True
    p_holm: float = math.nan

    @property
    def enough(self) -> bool:
        return (self.n_cases if self.level == "case" else self.n_units) >= self.minimum and self.n_cases >= 2

    @property
    def ci_ok(self) -> bool:
        return self.ci is not None and self.ci[1] - self.ci[0] > 0

    @property
    def significant(self) -> bool | None:
        """None = not assessed (too few); else Holm-adjusted p (raw p when no adjustment was made) < ALPHA."""
        if not self.enough:
            return None
        p = self.p_holm if not math.isnan(self.p_holm) else self.p
        return bool(not math.isnan(p) and p < ALPHA)

    @property
    def verdict(self) -> str:
        if not self.enough:
            what, n = ("test cases", self.n_cases) if self.level == "case" else ("lesions", self.n_units)
            return f"too few {what} to conclude ({n} < {self.minimum})"
        if not self.significant:
            return "no significant difference"
        better = (self.diff > 0) == self.higher_is_better
        return "mixed better" if better else "mixed worse"


def compare(metric: str, nested: Nested, base_values: Sequence[float], arm_values: Sequence[float], *,
            level: str = "case", higher_is_better: bool = True, seed: int = 0, n_boot: int = N_BOOT) -> Comparison:
    """Compare one metric: `nested` holds the paired differences, base/arm values only feed the two means."""
    means = unit_means(nested)
    units = [v for c in means.values() for v in c.values()]
    per_cluster = [float(np.mean(list(c.values()))) for c in means.values()]
    n_units = len(units)
    diff = float(np.mean(units)) if units else math.nan
    if level == "case" and all(len(c) == 1 for c in means.values()):
        p = wilcoxon_p(units)
    else:
        p = sign_flip_p([sum(c.values()) for c in means.values()], [len(c) for c in means.values()], seed=seed)
    ci = hierarchical_bootstrap(nested, seed=seed, n_boot=n_boot)

    def mean(v):
        v = [x for x in v if not math.isnan(x)]
        return float(np.mean(v)) if v else math.nan
    return Comparison(metric, level, len(means), n_units, mean(base_values), mean(arm_values), diff, ci, p,
                      cohens_dz(per_cluster), rank_biserial(units if level == "case" else per_cluster),
                      MIN_CASES if level == "case" else MIN_LESIONS, higher_is_better)


def adjust(comparisons: Sequence[Comparison]) -> None:
    """Holm-adjust, in place, the p values of the comparisons that are assessed (enough data)."""
    assessed = [c for c in comparisons if c.enough]
    for c, p in zip(assessed, holm([c.p for c in assessed])):
        c.p_holm = p
