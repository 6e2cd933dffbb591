"""Seed statistics: per-seed display below 3 seeds, clipped intervals, paired differences
against the dense model, each against a hand computation (the verdicts' statistics are
tests/test_evidence.py's)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fairsqueeze.reports.stats import CLIP_MARK, clip_interval, estimate, estimates, metric_bounds, paired_deltas


def test_two_seeds_show_their_values_never_a_t_interval():
    est = estimate([0.812, 0.845])
    assert est.n == 2 and math.isnan(est.half_width)
    assert str(est) == "0.812 | 0.845" and "±" not in est.display()
    grouped = estimates(pd.DataFrame({"label": ["a", "a", "b", "b", "b"], "acc": [0.8, 0.9, 0.5, 0.6, 0.7]}),
                        "label", ["acc"])
    assert grouped["a"]["acc"].display() == "0.800 | 0.900"
    # three seeds: the Student-t interval, by hand: sd 0.1, t_{0.975,2} = 4.3027 -> 0.2484
    assert grouped["b"]["acc"].display() == "0.600 ± 0.248"


def test_an_interval_is_clipped_to_the_metric_range_and_marked():
    est = estimate([0.97, 0.99, 1.0])  # mean 0.9867, half-width 0.0379: the upper end leaves [0, 1]
    low, high, clipped = clip_interval(est.mean, est.half_width, (0.0, 1.0))
    assert clipped == "high" and high == 1.0 and low == pytest.approx(est.mean - est.half_width)
    text = est.display(bounds=metric_bounds("accuracy"))
    assert text.endswith(f"1.000{CLIP_MARK}]") and "±" not in text
    assert clip_interval(0.5, 0.1, (0.0, 1.0))[2] == "" and clip_interval(0.0, 2.0, (0.0, 1.0))[2] == "both"
    assert metric_bounds("eodd_sum", 10) == (0.0, 20.0) and metric_bounds("support") is None


def test_paired_delta_against_the_dense_model_of_the_same_seed():
    # the dense model varies across seeds far more than the method's change: pairing removes it
    dense = {0: 0.70, 1: 0.80, 2: 0.90, 3: 0.75}
    change = {0: -0.010, 1: -0.012, 2: -0.008, 3: -0.010}
    rows = [{"task_key": "t", "model": "m", "label": "dense", "method": "dense", "seed": s, "accuracy": v}
            for s, v in dense.items()]
    rows += [{"task_key": "t", "model": "m", "label": "p", "method": "prune", "seed": s, "accuracy": dense[s] + change[s]}
             for s in dense]
    out = paired_deltas(pd.DataFrame(rows), ["accuracy"]).iloc[0]
    d = np.array(list(change.values()))
    assert out["delta"] == pytest.approx(d.mean()) and out["n"] == 4
    assert out["half_width"] == pytest.approx(stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2)
    assert out["per_seed"] == pytest.approx(change)
    unpaired = estimate([dense[s] + change[s] for s in dense]).half_width
    assert out["half_width"] < unpaired / 20  # the unpaired interval is dominated by the seeds
    # a seed without its dense run is left out of the pairs
    partial = paired_deltas(pd.DataFrame([r for r in rows if not (r["method"] == "dense" and r["seed"] == 3)]),
                            ["accuracy"]).iloc[0]
    assert partial["n"] == 3 and 3 not in partial["per_seed"]


def test_a_report_of_two_seeds_shows_per_seed_values_not_intervals(tmp_path):
    import re
    import warnings

    from synthetic_results import make_results
    from fairsqueeze.reports.html import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = make_results(seeds=(0, 1), failed=False)
    page = build_report(results, "two-seeds", tmp_path).read_text()
    table = page[page.index('class="sortable comparison"'):]
    table = table[:table.index("</table>")]
    assert "±" not in table
    dense_acc = results.done().query("method == 'dense'").sort_values("seed")["accuracy"].tolist()
    assert f"{dense_acc[0]:.3f} | {dense_acc[1]:.3f}" in table
    assert re.search(r"\d\.\d{3} \| \d\.\d{3}", table)


def test_a_report_cell_clips_its_interval_to_the_metric_range_and_marks_it():
    from fairsqueeze.reports.columns import Column
    from fairsqueeze.reports.tables import Row, cells_html

    def cell(est, col):
        row = Row("m", "m", "other", 0, "m", {}, [(0, "k")], {}, {col.key: est})
        return str(cells_html(row, [col], 2))

    gap = Column("deo", "TPR gap", "fairness", "TPR gap", False)
    near_zero = cell(estimate([0.0, 0.01, 0.05]), gap)  # mean 0.02, half-width 0.066
    assert f"[{CLIP_MARK}0.000, 0.086]" in near_zero and "±" not in near_zero
    inside = cell(estimate([0.40, 0.41, 0.42]), gap)
    assert "0.410<small> ± 0.025</small>" in inside
    ratio = Column("compression_ratio", "ratio", "cost", "ratio", True)  # unbounded: never clipped
    assert CLIP_MARK not in cell(estimate([0.1, 1.0, 3.0]), ratio)
    two = cell(estimate([0.40, 0.45]), gap)  # two seeds: the values, no interval
    assert "0.400 | 0.450" in two and "±" not in two
