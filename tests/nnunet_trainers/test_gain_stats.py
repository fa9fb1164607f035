"""Paired statistics of the gain benchmark, against answers known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_trainers.gain import stats


def _cases(diffs, reps=1, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return {f"c{i}": {f"c{i}": list(d + rng.normal(0, jitter, reps))} for i, d in enumerate(diffs)}


def test_constant_positive_shift_over_30_cases_is_significant():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.4, 0.8, 30)
    diffs = np.full(30, 0.05) + rng.normal(0, 0.01, 30)
    c = stats.compare("dice", _cases(diffs), base, base + diffs)
    assert c.enough and c.significant and c.verdict == "mixed better"
    assert c.p < 1e-6 and c.ci_ok and 0.04 < c.ci[0] < c.diff < c.ci[1] < 0.06
    assert c.dz > 3 and c.rank_biserial == pytest.approx(1.0)


def test_pure_noise_is_not_significant():
    rng = np.random.default_rng(2)
    diffs = rng.normal(0, 0.05, 30)
    diffs -= diffs.mean()                                  # no shift at all
    c = stats.compare("dice", _cases(diffs), np.zeros(30), diffs)
    assert c.enough and not c.significant and c.verdict == "no significant difference"
    assert c.p > 0.5 and c.ci[0] < 0 < c.ci[1]


def test_lower_is_better_metric_turns_a_rise_into_a_loss():
    c = stats.compare("hd95", _cases(np.linspace(1.0, 2.0, 12)), np.zeros(12), np.ones(12), higher_is_better=False)
    assert c.significant and c.verdict == "mixed worse"


def test_three_cases_are_too_few_to_conclude_whatever_the_shift():
    c = stats.compare("dice", _cases([0.3, 0.31, 0.29]), [0.1] * 3, [0.4] * 3)
    assert not c.enough and c.significant is None
    assert c.verdict == "too few test cases to conclude (3 < 10)"


def test_lesion_level_needs_20_lesions_and_flips_cases_together():
    few = {f"c{i}": {f"c{i}/r{k}": [1.0] for k in range(3)} for i in range(5)}          # 15 lesions
    c = stats.compare("detected", few, [0] * 15, [1] * 15, level="lesion")
    assert c.verdict == "too few lesions to conclude (15 < 20)"
    many = {f"c{i}": {f"c{i}/r{k}": [1.0] for k in range(3)} for i in range(12)}        # 36 lesions, 12 cases
    c = stats.compare("detected", many, [0] * 36, [1] * 36, level="lesion")
    assert c.enough and c.significant
    assert c.p == pytest.approx(2 / 2 ** 12)             # exact: only all-plus and all-minus are as extreme


def test_degenerate_cis_are_never_reported():
    assert stats.hierarchical_bootstrap({"c0": {"c0": [0.1, 0.2]}}) is None          # one cluster
    c = stats.compare("dice", _cases([0.0] * 12), [0.5] * 12, [0.5] * 12)
    assert c.ci == (0.0, 0.0) and not c.ci_ok                                           # zero width
    assert c.p == 1.0 and not c.significant


def test_bootstrap_resamples_seeds_within_cases():
    # every case's mean is 0.1, but the seeds disagree: the CI must widen with replicate spread
    tight = {f"c{i}": {f"c{i}": [0.1, 0.1]} for i in range(15)}
    loose = {f"c{i}": {f"c{i}": [-0.4, 0.6]} for i in range(15)}
    lo_t, hi_t = stats.hierarchical_bootstrap(tight)
    lo_l, hi_l = stats.hierarchical_bootstrap(loose)
    assert hi_t - lo_t == pytest.approx(0.0) and hi_l - lo_l > 0.1
    assert stats.hierarchical_bootstrap(loose) == stats.hierarchical_bootstrap(loose)    # seeded


def test_holm_adjustment_and_nan_handling():
    assert stats.holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06], nan_ok=True)
    cs = [stats.compare("a", _cases(np.full(12, 0.1) + np.arange(12) * 1e-3), [0] * 12, [0.1] * 12),
          stats.compare("b", _cases([0.1] * 3), [0] * 3, [0.1] * 3)]
    stats.adjust(cs)
    assert not math.isnan(cs[0].p_holm) and math.isnan(cs[1].p_holm)
