"""The cell-unit statistics against independent facts: hand formulas (Holm's steps, the
random-effects estimating equation, DerSimonian–Laird, the prediction interval), SciPy's
t-test, statsmodels' TOST and a power simulation."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects
from statsmodels.stats.weightstats import ttost_paired

from fairsqueeze.reports import evidence


def test_configurations_of_one_seed_are_averaged_before_the_seeds():
    pairs = pd.DataFrame({"cell": ["a"] * 6, "seed": [0, 0, 1, 1, 2, 2], "config": list("xyxyxy"),
                          "diff": [0.1, 0.3, 0.2, 0.2, 0.0, 0.4]})
    row = evidence.cell_effects(pairs).iloc[0]
    # seed means 0.2, 0.2, 0.2: three units that agree, not six pairs that spread
    assert row["seeds"] == 3 and row["configs"] == 2
    assert row["effect"] == pytest.approx(0.2) and row["se"] == pytest.approx(0.0, abs=1e-15)


def test_holm_levels_by_hand_over_a_fixed_family():
    # sorted 0.01 <= 0.05/4 (rejected), 0.02 > 0.05/3 (stops): every later member keeps the level 0.05/3
    reject, adjusted, level = evidence.holm_levels([0.04, 0.01, 0.03, 0.02], 0.05)
    assert reject.tolist() == [False, True, False, False]
    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert level == pytest.approx([0.05 / 3, 0.05 / 4, 0.05 / 3, 0.05 / 3])
    # an untested member enters with p = 1: m stays 3
    _, adjusted, level = evidence.holm_levels([0.01, float("nan"), 0.02], 0.05)
    assert adjusted == pytest.approx([0.03, 1.0, 0.04]) and level[0] == pytest.approx(0.05 / 3)
    # a member's (1 - level) interval excludes 0 exactly when Holm rejects it
    reject, _, level = evidence.holm_levels([0.04, 0.01, 0.03, 0.02], 0.05)
    assert ((np.array([0.04, 0.01, 0.03, 0.02]) < level) == reject).all()


def _cells(effects, ses):
    return pd.DataFrame({"cell": [f"c{i}" for i in range(len(effects))], "effect": effects, "se": ses})


def test_the_pooled_estimate_solves_the_paule_mandel_equation_and_matches_statsmodels():
    y, se = np.array([-0.04, 0.01, -0.02, 0.03, -0.05]), np.array([0.01, 0.012, 0.008, 0.015, 0.01])
    est = evidence.pool(_cells(y, se))
    w = 1 / (se ** 2 + est.tau2)
    mu = (w * y).sum() / w.sum()
    # by hand: the weighted mean, its standard error and Q(τ²) = k − 1 (heterogeneous cells: τ² > 0)
    assert est.tau2 > 0 and (w * (y - mu) ** 2).sum() == pytest.approx(len(y) - 1, abs=1e-4)
    assert est.effect == pytest.approx(mu) and est.se == pytest.approx(1 / math.sqrt(w.sum()))
    res = combine_effects(y, se ** 2, method_re="iterated", use_t=True)
    assert est.interval(0.05) == pytest.approx(tuple(res.conf_int(alpha=0.05, use_t=True)[1]))
    # prediction interval by hand: μ ± t_{k−2} √(τ² + SE²)
    half = stats.t.ppf(0.975, 3) * math.sqrt(est.tau2 + est.se ** 2)
    assert (est.pred_low, est.pred_high) == pytest.approx((mu - half, mu + half))
    # the p-value: t on k − 1 degrees of freedom
    assert est.p == pytest.approx(2 * stats.t.sf(abs(mu) / est.se, 4))


def test_dersimonian_laird_by_hand_on_a_tiny_example():
    # three cells, effects 0.1, 0.3, 0.5 with variances 0.01, 0.02, 0.04
    y, v = np.array([0.1, 0.3, 0.5]), np.array([0.01, 0.02, 0.04])
    w = 1 / v  # 100, 50, 25
    fixed = (w * y).sum() / w.sum()  # (10 + 15 + 12.5) / 175 = 0.2142857
    q = (w * (y - fixed) ** 2).sum()
    c = w.sum() - (w ** 2).sum() / w.sum()  # 175 − 13125/175 = 100
    tau2 = (q - 2) / c
    assert fixed == pytest.approx(37.5 / 175) and c == pytest.approx(100.0)
    # Q = 100·(4/35)² + 50·(3/35)² + 25·(10/35)² = 26/7, so τ² = (26/7 − 2) / 100 = 3/175
    assert q == pytest.approx(26 / 7) and tau2 == pytest.approx(3 / 175)
    res = combine_effects(y, v, method_re="chi2")
    assert res.tau2 == pytest.approx(tau2) and res.q == pytest.approx(q)
    wr = 1 / (v + tau2)
    assert res.mean_effect_re == pytest.approx((wr * y).sum() / wr.sum())
    # the homogeneous case: Q below its df; Paule–Mandel (what the verdicts use) stops at τ² = 0
    flat = evidence.pool(_cells([0.1, 0.11, 0.1], [0.05, 0.05, 0.05]))
    assert flat.tau2 == 0.0 and flat.effect == pytest.approx(0.31 / 3)


def test_one_cell_uses_its_seeds_as_the_units():
    x = np.array([-0.02, -0.01, -0.03, -0.015])
    cells = evidence.cell_effects(pd.DataFrame({"cell": "a", "seed": range(4), "diff": x}))
    est = evidence.pool(cells, x)
    assert est.unit == "seeds" and est.units == 4 and est.df == 3
    assert est.p == pytest.approx(stats.ttest_1samp(x, 0).pvalue)
    assert est.interval(0.05) == pytest.approx(tuple(stats.ttest_1samp(x, 0).confidence_interval()))
    # TOST on the estimate is statsmodels' paired TOST on the same seeds
    p_tost = ttost_paired(x, np.zeros(4), -0.05, 0.05)[0]
    assert evidence.tost_p(est, 0.05) == pytest.approx(p_tost)
    assert evidence.pool(cells.assign(se=np.nan), x) is None


def test_equivalence_needs_the_cells_to_agree_not_only_the_mean():
    agree = evidence.pool(_cells([0.001, -0.001, 0.0005, 0.0, -0.0005, 0.001], [0.001] * 6))
    assert evidence.equivalent(agree, 0.01, 0.05)
    split = evidence.pool(_cells([0.01, -0.01] * 3, [0.001] * 6))  # ±δ: the mean is 0
    assert abs(split.effect) < 1e-12 and split.tau2 > 0
    assert not evidence.equivalent(split, 0.01, 0.05)


def test_the_detectable_effect_is_detected_with_the_stated_power():
    x = np.random.default_rng(1).normal(0, 0.02, 10)
    est = evidence.pool(evidence.cell_effects(pd.DataFrame({"cell": "a", "seed": range(10), "diff": x})), x)
    level = 0.05 / 13
    mde = evidence.detectable(est, level)
    sd = est.unit_sd
    rng = np.random.default_rng(0)
    draws = rng.normal(mde, sd, size=(20000, 10))
    rejected = stats.ttest_1samp(draws, 0.0, axis=1).pvalue < level
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)
    assert mde > evidence.detectable(est, 0.05) > 0  # the stricter level needs a larger effect
    n = evidence.units_needed(est, 0.01, level)
    from statsmodels.stats.power import TTestPower
    power = TTestPower().power
    assert power(0.01 / sd, n, level) >= 0.8 > power(0.01 / sd, n - 1, level)


def test_the_detectable_effect_is_right_with_three_cells_at_a_holm_level():
    # three cells at α = 0.05/15: statsmodels' solver returns d = 5.5 (power 0.26) here; ours checks
    est = evidence.pool(_cells([0.01, -0.02, 0.005], [0.004, 0.004, 0.004]))
    level = 0.05 / 15
    mde = evidence.detectable(est, level)
    assert evidence.power(mde / est.unit_sd, 3, level) == pytest.approx(0.8, abs=1e-6)
    # a simulation of the t-test on three units agrees, and the effect exceeds the interval's half-width
    rng = np.random.default_rng(2)
    draws = rng.normal(mde, est.unit_sd, size=(40000, 3))
    assert (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < level).mean() == pytest.approx(0.8, abs=0.01)
    assert mde > est.interval(level)[1] - est.effect
