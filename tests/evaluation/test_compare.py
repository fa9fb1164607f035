"""Two-sample tests must say 'indistinguishable' for one distribution and 'distinguishable' for two."""

from __future__ import annotations

import numpy as np
import pytest

from ld_augment.evaluation.compare import (effect, feature_table, paired_effect, stratified_effect,
                                           train_synthetic_test_real, two_sample_auc)


def _rows(n: int, rng: np.random.Generator, shift: float = 0.0) -> list[dict]:
    return [{"equivalent_diameter_mm": rng.normal(10 + 4 * shift, 3), "sphericity": rng.normal(0.83 + 0.05 * shift, 0.04),
             "contrast_hu": rng.normal(-40 - 30 * shift, 10), "parenchyma_hu": rng.normal(50 + 100 * shift, 5)}
            for _ in range(n)]


def test_same_distribution_auc_near_half() -> None:
    rng = np.random.default_rng(0)
    out = two_sample_auc(_rows(40, rng), _rows(60, rng), seed=0)
    assert out["features"] == ["equivalent_diameter_mm", "sphericity", "contrast_hu"]  # scan feature left out
    assert 0.3 <= out["logistic"] <= 0.7 and 0.3 <= out["random_forest"] <= 0.7
    assert 0.3 <= out["shuffled_control"] <= 0.7


def test_auc_interval_shows_how_far_a_small_set_can_move() -> None:
    """The interval holds the AUC, holds 0.5 for one distribution and not for two, and a small synthetic set
    gets a wider one than a large set (40 lesions against 600: +-0.05 between seeds in bench_lidc_compare)."""
    rng = np.random.default_rng(2)
    same = two_sample_auc(_rows(40, rng), _rows(300, rng), seed=0)
    apart = two_sample_auc(_rows(40, rng, shift=1.0), _rows(300, rng), seed=0)
    large = two_sample_auc(_rows(300, rng), _rows(300, rng), seed=0)
    for out in (same, apart, large):
        for model in ("logistic", "random_forest"):
            lo, hi = out["interval"][model]
            assert lo <= out[model] <= hi
    assert same["interval"]["logistic"][0] < 0.5 < same["interval"]["logistic"][1]
    assert apart["interval"]["logistic"][0] > 0.7
    width = lambda out: out["interval"]["logistic"][1] - out["interval"]["logistic"][0]  # noqa: E731
    assert width(same) > 1.5 * width(large)


def test_different_distributions_auc_near_one() -> None:
    rng = np.random.default_rng(1)
    out = two_sample_auc(_rows(40, rng, shift=1.5), _rows(60, rng), seed=0)
    assert out["logistic"] > 0.9 and out["random_forest"] > 0.9
    assert 0.3 <= out["shuffled_control"] <= 0.7  # the control does not follow the signal


def test_too_few_real_lesions() -> None:
    rng = np.random.default_rng(2)
    out = two_sample_auc(_rows(30, rng), _rows(4, rng))
    assert out["verdict"].startswith("too few") and "logistic" not in out


def test_feature_table_flags_a_median_outside_the_real_iqr() -> None:
    rng = np.random.default_rng(3)
    real = _rows(200, rng)
    syn = [dict(r, sphericity=r["sphericity"] + 0.1) for r in _rows(50, rng)]
    table = {t["feature"]: t for t in feature_table(syn, real, ["sphericity", "equivalent_diameter_mm"])}
    assert table["sphericity"]["inside_real_iqr"] is False
    assert table["equivalent_diameter_mm"]["inside_real_iqr"] is True
    assert table["sphericity"]["wasserstein_iqr"] > 1.5 > table["equivalent_diameter_mm"]["wasserstein_iqr"]
    assert table["sphericity"]["real_median"] == pytest.approx(np.median([r["sphericity"] for r in real]))


def test_effect_is_a_median_difference() -> None:
    rows = [{"g": "a", "x": 1.0}, {"g": "a", "x": 3.0}, {"g": "b", "x": 10.0}]
    out = effect(rows, "x", lambda r: r["g"] == "a", lambda r: r["g"] == "b")
    assert out == {"feature": "x", "n_a": 2, "n_b": 1, "effect": -8.0}


def test_stratified_effect_removes_what_size_alone_explains() -> None:
    """Group a is larger and the feature grows with size, but within each size band a is 0.1 above b: the raw
    difference shows mostly the size, the size-matched one the attribute."""
    rng = np.random.default_rng(4)
    rows = []
    for group, sizes in (("a", [5, 11, 11, 16, 16, 16]), ("b", [5, 5, 5, 11, 11, 16])):
        for d in sizes * 3:
            x = 3.0 + 0.1 * d + (0.1 if group == "a" else 0.0) + rng.normal(0, 0.001)
            rows.append({"g": group, "equivalent_diameter_mm": d + rng.uniform(-0.5, 0.5), "x": x})
    a, b = (lambda r: r["g"] == "a"), (lambda r: r["g"] == "b")
    assert effect(rows, "x", a, b)["effect"] > 0.5
    out = stratified_effect(rows, "x", a, b)
    assert out["effect"] == pytest.approx(0.1, abs=0.01) and out["n_strata"] == 3
    # a stratum with one group missing does not count, and a custom stratum key is honoured
    out = stratified_effect(rows, "x", a, b, stratum=lambda r: "all")
    assert out["n_strata"] == 1 and out["effect"] > 0.5
    assert np.isnan(stratified_effect(rows[:18], "x", a, b)["effect"])  # only group a


def test_paired_effect_is_the_median_pair_difference() -> None:
    """Pairs differ by +0.1 while the pairs themselves lie 2 apart: one unpaired row moves a difference of group
    medians by far more than the effect, the paired median not at all."""
    rows = [{"pair": k, "g": g, "x": 2.0 * (k % 2) + (0.1 if g == "a" else 0.0)} for k in range(6) for g in "ab"]
    rows.append({"pair": 99, "g": "b", "x": 0.0})  # its partner failed
    a, b = (lambda r: r["g"] == "a"), (lambda r: r["g"] == "b")
    out = paired_effect(rows, "x", a, b, pair=lambda r: r["pair"])
    assert out["effect"] == pytest.approx(0.1) and out["n_pairs"] == 6
    assert effect(rows, "x", a, b)["effect"] > 0.5
    assert np.isnan(paired_effect(rows[:1], "x", a, b, pair=lambda r: r["pair"])["effect"])


def _patches(n: int, rng: np.random.Generator, lesion_hu: float | None, radius: float = 3.0) -> list[np.ndarray]:
    g = np.indices((9, 9, 9)) - 4
    r = np.sqrt((g**2).sum(0))
    out = []
    for _ in range(n):
        p = rng.normal(50, 8, (9, 9, 9))
        if lesion_hu is not None:
            ball = r <= radius * rng.uniform(0.8, 1.2)
            p[ball] = lesion_hu + rng.normal(0, 8, int(ball.sum()))
        out.append(p.astype(np.float32))
    return out


def test_train_synthetic_test_real_finds_similar_lesions_not_unlike_ones() -> None:
    rng = np.random.default_rng(4)
    sp = (2.0, 2.0, 2.0)
    syn_pos, syn_neg = _patches(30, rng, 0.0), _patches(30, rng, None)
    real_like, real_neg = _patches(20, rng, 5.0), _patches(20, rng, None)
    good = train_synthetic_test_real(syn_pos, syn_neg, real_like, real_neg, sp, seed=0)
    assert good["auc"] > 0.9 and good["negatives"] == "real lesion-free patches"
    assert good["real_ceiling_auc"] > 0.9
    real_unseen = _patches(20, rng, 50.0)  # isodense "lesions": nothing a detector could learn to find
    bad = train_synthetic_test_real(syn_pos, syn_neg, real_unseen, real_neg, sp, seed=0)
    assert bad["auc"] < 0.7
    none = train_synthetic_test_real(syn_pos, syn_neg, real_like, [], sp, seed=0)
    assert "held-out" in none["negatives"] and none["auc"] > 0.9


def test_per_feature_auc_names_what_gives_synthetic_lesions_away() -> None:
    """Only contrast differs: it comes first, far from 0.5 and below it (lower in synthetic); the others ~0.5."""
    rng = np.random.default_rng(3)
    syn = _rows(60, rng)
    for r in syn:
        r["contrast_hu"] -= 60.0
    out = two_sample_auc(syn, _rows(80, rng), seed=0)["per_feature_auc"]
    assert list(out)[0] == "contrast_hu" and out["contrast_hu"] < 0.1
    assert all(0.3 <= out[k] <= 0.7 for k in ("equivalent_diameter_mm", "sphericity"))


def test_auc_without_the_label_convention_reads_the_lesions() -> None:
    """Lesions alike, labels drawn differently (generous real contours, ours at half contrast): the full AUC finds
    the convention, the AUC without its two features is ~0.5. Sets that differ in the lesions stay apart."""
    rng = np.random.default_rng(5)

    def labelled(rows: list[dict], below_half: float) -> list[dict]:
        return [{**r, "label_below_half_fraction": rng.normal(below_half, 0.03),
                 "visible_diameter_ratio": rng.normal(1.0 + below_half, 0.03)} for r in rows]

    same = two_sample_auc(labelled(_rows(60, rng), 0.05), labelled(_rows(80, rng), 0.2), seed=0)
    assert same["logistic"] > 0.9 and same["without_label_convention"]["logistic"] < 0.7
    apart = two_sample_auc(labelled(_rows(60, rng, shift=1.5), 0.05), labelled(_rows(80, rng), 0.2), seed=0)
    assert apart["without_label_convention"]["logistic"] > 0.9
    assert "without_label_convention" not in two_sample_auc(_rows(30, rng), _rows(40, rng), seed=0)


def test_classifier_does_not_read_the_scan_back_from_core_and_contrast() -> None:
    """The same lesions in a scan whose organ is 100 HU denser (core up by as much, contrast the same): with the
    core the classifier detects the scan (AUC ~1), so it keeps the contrast only (~0.5)."""
    rng = np.random.default_rng(6)

    def in_scan(rows: list[dict], organ_hu: float) -> list[dict]:
        out = []
        for r in rows:
            parenchyma = rng.normal(organ_hu, 10.0)
            out.append({**r, "parenchyma_hu": parenchyma, "core_hu": parenchyma + r["contrast_hu"]})
        return out

    syn, real = in_scan(_rows(60, rng), 150.0), in_scan(_rows(80, rng), 50.0)
    leaky = two_sample_auc(syn, real, ["equivalent_diameter_mm", "sphericity", "contrast_hu", "core_hu"], seed=0)
    assert leaky["logistic"] > 0.9
    out = two_sample_auc(syn, real, seed=0)
    assert "core_hu" not in out["features"] and "contrast_hu" in out["features"]
    assert out["logistic"] < 0.7 and out["random_forest"] < 0.7
    only_core = [{k: v for k, v in r.items() if k != "contrast_hu"} for r in syn]
    assert "core_hu" in two_sample_auc(only_core, [{k: v for k, v in r.items() if k != "contrast_hu"} for r in real],
                                       seed=0)["features"]  # without a contrast the core is the lesion's HU
