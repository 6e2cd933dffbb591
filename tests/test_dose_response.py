"""Dose–response: per-cell curves against hand computation, the trend's slopes against numpy's
least squares on the position of log dose in the cell's range and its pooling against
statsmodels; a planted trend, its reverse, none, and a single dose; the dose of a pruned run;
the verdict row, its Holm family and the page's figure."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from fairsqueeze.reports import dose_response
from fairsqueeze.reports.verdicts import Claim, Side, evaluate

DOSES = (1.5, 2.0, 4.0)
CELLS = [f"cell{i}" for i in range(6)]


def position(d, doses):
    return (math.log(d) - math.log(min(doses))) / (math.log(max(doses)) - math.log(min(doses))) if len(doses) > 1 else 0.0


def planted_pairs(slope, noise=0.002, doses=DOSES, seeds=range(5), seed=0):
    """Δ = a cell's offset + ``slope`` · (position of log dose between the lightest and the
    heaviest) + noise, per cell, seed and dose."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, cell in enumerate(CELLS):
        for s in seeds:
            for d in doses:
                rows.append({"cell": cell, "seed": s, "config": f"fair({d})", "dose": d,
                             "diff": 0.01 * c + slope * position(d, doses) + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_each_seeds_slope_is_the_least_squares_slope_on_the_position_of_log_dose_in_its_cells_range():
    pairs = planted_pairs(-0.02)
    found = dose_response.slopes(pairs).set_index(["cell", "seed"])
    for (cell, seed), group in pairs.groupby(["cell", "seed"]):
        x = (np.log(group["dose"]) - np.log(1.5)) / (np.log(4.0) - np.log(1.5))  # by hand: 0, 0.29, 1
        expected = np.polyfit(x, group["diff"], 1)[0]
        assert found.loc[(cell, seed), "slope"] == pytest.approx(expected, rel=1e-12)
        assert found.loc[(cell, seed), "doses"] == 3


def test_the_pooled_trend_is_statsmodels_random_effects_over_the_cells_mean_slopes():
    pairs = planted_pairs(-0.02, noise=0.01)
    est, doses = dose_response.trend(pairs)
    per_cell = dose_response.slopes(pairs).groupby("cell")["slope"]
    means, se = per_cell.mean().to_numpy(), (per_cell.std(ddof=1) / np.sqrt(per_cell.count())).to_numpy()
    ref = combine_effects(means, se ** 2, method_re="iterated", use_t=True)
    assert est.effect == pytest.approx(float(ref.mean_effect_re), rel=1e-9)
    assert est.se == pytest.approx(float(ref.sd_eff_w_re), rel=1e-9)
    assert est.units == 6 and est.unit == "cells" and doses == 3


@pytest.mark.parametrize("slope, expected", [(-0.02, "falls"), (+0.02, "rises"), (0.0, "flat")])
def test_a_planted_trend_falls_its_reverse_rises_and_none_is_flat(slope, expected):
    est, _ = dose_response.trend(planted_pairs(slope))
    reading, low, high = dose_response.reading(est, delta=0.01, level=0.05)
    assert reading == expected and low < est.effect < high
    if expected != "flat":
        assert low < slope < high


def test_noise_far_above_the_trend_reads_unclear():
    est, _ = dose_response.trend(planted_pairs(0.005, noise=0.05, seeds=range(3)))
    assert dose_response.reading(est, 0.01, 0.05)[0] == "unclear"


def test_one_dose_has_no_trend_and_no_curve_to_draw_beyond_a_point():
    pairs = planted_pairs(-0.02, doses=(2.0,))
    assert dose_response.trend(pairs) == (None, 1)
    assert dose_response.reading(None, 0.01, 0.05)[0] == ""
    curve = dose_response.curves(pairs)
    assert curve.groupby("cell")["dose"].nunique().max() == 1


def test_a_curve_point_is_the_mean_over_seeds_with_its_student_t_interval():
    pairs = planted_pairs(-0.02, noise=0.01)
    curve = dose_response.curves(pairs).set_index(["cell", "config"])
    x = pairs[(pairs["cell"] == "cell3") & (pairs["config"] == "fair(4.0)")]["diff"].to_numpy()
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    point = curve.loc[("cell3", "fair(4.0)")]
    assert point["dose"] == 4.0 and point["seeds"] == 5
    assert point["effect"] == pytest.approx(x.mean()) and point["high"] - point["effect"] == pytest.approx(half)


def frame_with_trend(slope, seed=0):
    """Runs of a dense model, a fair method at three ratios and its twin at the same ratios
    (matched by ``ratio``), the fair side's gap moving by ``slope`` from the lightest to the heaviest."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, cell in enumerate(CELLS):
        for s in range(5):
            common = {"task_key": cell, "task_label": cell, "model": "mlp", "seed": s, "num_classes": 2, "flags": [],
                      "dense_key": f"{cell}-{s}"}
            rows.append({**common, "method": "dense", "label": "dense", "params": {}, "gap": 0.1, "accuracy": 0.8,
                         "compression_ratio": 1.0, "run_key": f"d-{cell}-{s}"})
            for d in DOSES:
                twin = 0.1 + 0.02 * math.log2(d) + rng.normal(0, 0.002)
                for method, gap in (("twin", twin), ("fair", twin + slope * position(d, DOSES) + rng.normal(0, 0.002))):
                    rows.append({**common, "method": method, "label": f"{method}({d})", "params": {"ratio": d},
                                 "gap": gap, "accuracy": 0.8, "compression_ratio": d, "run_key": f"{method}-{cell}-{s}-{d}"})
    return pd.DataFrame(rows)


def claim(cid="fair-vs-twin"):
    return Claim(cid, "Fair lowers the gap", "a paper", Side("fair"), Side("twin"), {"binary": "gap", "multiclass": "gap"},
                 "lower", ("ratio",), delta=0.01)


def test_the_verdict_row_carries_the_trend_and_holm_runs_over_the_rows_with_one():
    found = evaluate(frame_with_trend(-0.02), [claim()])
    row = found.table.iloc[0]
    est, doses = dose_response.trend(found.pairs["fair-vs-twin"])
    assert row["trend"] == pytest.approx(est.effect) and row["doses"] == doses == 3
    assert row["trend_reading"] == "falls" and row["trend_p_holm"] == pytest.approx(row["trend_p"])
    # a second claim on a flat frame joins the trend family: Holm doubles the smaller p
    flat = frame_with_trend(0.0, seed=1).assign(method=lambda f: f["method"].replace({"fair": "fair2"}))
    both = evaluate(pd.concat([frame_with_trend(-0.02), flat[flat["method"] == "fair2"]]),
                    [claim(), Claim("fair2-vs-twin", "c", "s", Side("fair2"), Side("twin"),
                                    {"binary": "gap", "multiclass": "gap"}, "lower", ("ratio",), delta=0.01)])
    table = both.table.set_index("id")
    assert table.loc["fair-vs-twin", "trend_p_holm"] == pytest.approx(2 * table.loc["fair-vs-twin", "trend_p"])
    assert table.loc["fair2-vs-twin", "trend_reading"] == "flat"
    assert set(both.curves) == {"fair-vs-twin", "fair2-vs-twin"}


def test_the_page_draws_a_dose_response_figure_for_a_row_with_several_ratios(tmp_path):
    from fairsqueeze.reports import figures
    from fairsqueeze.reports.verdict_page import verdict_context

    found = evaluate(frame_with_trend(-0.02), [claim()])
    ctx = verdict_context(found, tmp_path, figures.FigureCache(tmp_path / "figures", "figures"))
    (row,) = ctx["verdicts"]
    assert row["dose_plot"] is not None and (tmp_path / row["dose_plot"].src).is_file()
    assert "lightest to the heaviest" in row["trend_text"] and row["trend_text"].endswith("falls")
    one_ratio = frame_with_trend(-0.02)
    one_ratio = one_ratio[one_ratio["compression_ratio"].isin([1.0, 2.0])]
    (row,) = verdict_context(evaluate(one_ratio, [claim()]), tmp_path / "b",
                             figures.FigureCache(tmp_path / "b" / "figures", "figures"))["verdicts"]
    assert row["dose_plot"] is None and row["trend_text"] == ""


def test_a_pruned_runs_dose_is_its_nonzero_ratio_and_a_quantized_runs_its_size_ratio():
    """Pruning stores its zeros dense (size ratio 1); its dose is the dense model's nonzero
    weights over its own. Quantization keeps every weight; its dose is the size ratio."""
    from fairsqueeze.reports.verdicts import _dose

    dense = {"d": 1000.0}
    assert _dose({"compression_ratio": 1.0, "nonzeros": 250, "dense_key": "d"}, dense) == 4.0
    assert _dose({"compression_ratio": 1.17, "nonzeros": 1000, "dense_key": "d"}, dense) == 1.17
    assert _dose({"compression_ratio": 1.5}, {}) == 1.5  # no footprint counts: the size ratio


def test_figure_cell_names_keep_the_sensitive_attribute_and_fall_back_when_two_would_collide():
    from fairsqueeze.reports.figures import _cell_names

    cells = ["adult: income / race (split=random, split_seed=per_seed) · mlp(hidden=[128, 64])",
             "adult: income / sex (split=random, split_seed=per_seed) · mlp(hidden=[128, 64])"]
    assert _cell_names(cells) == ["adult: income / race · mlp", "adult: income / sex · mlp"]
    same = ["adult: income / sex (split=random) · mlp(hidden=[128, 64])", "adult: income / sex (split=upstream) · mlp(hidden=[64])"]
    names = _cell_names(same)
    assert len(set(names)) == 2 and all("(" in n for n in names)
