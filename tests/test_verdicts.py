"""Verdicts on planted effects (real, reversed, null, tiny, noise with few seeds, cells that
disagree, no variation, mixed metrics); the pooled numbers against statsmodels; matching by
parameters and by compression ratio; runs and idle pairs left out; the packaged claims."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.meta_analysis import combine_effects

from fairsqueeze.reports.verdicts import Claim, Side, claim_pairs, evaluate, load_claims, verdicts

CELLS = [("adult", 2), ("compas", 2), ("german", 2), ("digits-mlp", 10), ("digits-vgg", 10), ("celeba", 2)]
SEEDS = range(5)


def synthetic(effect, noise=0.004, seed=0, seeds=SEEDS, cells=CELLS, configs=(0.5,)):
    """Runs of a dense model, a fair method and its twin on each cell x seed x configuration.
    The dense gap varies by seed (0.05 to 0.25); the twin adds 0.02 to it, the fair method
    ``effect`` more (a number, or one per cell), each with its own noise. Accuracy: the twin
    0.80, the fair method 0.795."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, (task, k) in enumerate(cells):
        planted = effect[c] if isinstance(effect, (list, tuple)) else effect
        for s in seeds:
            base = 0.05 + 0.05 * s + 0.01 * c
            common = {"task_key": task, "task_label": task, "model": "mlp", "seed": s, "num_classes": k, "flags": [],
                      "dense_key": f"{task}-{s}"}
            rows.append({**common, "method": "dense", "label": "dense", "params": {}, "gap": base, "accuracy": 0.81,
                         "compression_ratio": 1.0, "run_key": f"d-{task}-{s}"})
            for r in configs:
                twin = base + 0.02 + rng.normal(0, noise)
                rows.append({**common, "method": "twin", "label": f"twin({r})", "params": {"ratio": r}, "gap": twin,
                             "accuracy": 0.80 + rng.normal(0, 0.001), "compression_ratio": 2.0,
                             "run_key": f"t-{task}-{s}-{r}"})
                rows.append({**common, "method": "fair", "label": f"fair({r})", "params": {"ratio": r},
                             "gap": twin + planted + rng.normal(0, noise), "accuracy": 0.795 + rng.normal(0, 0.001),
                             "compression_ratio": 2.0, "run_key": f"f-{task}-{s}-{r}"})
    return pd.DataFrame(rows)


CLAIM = Claim("fair-vs-twin", "Fair lowers the gap against its twin", "a paper", Side("fair"), Side("twin"),
              {"binary": "gap", "multiclass": "gap"}, "lower", ("ratio",), delta=0.01)


def one(frame, claim=CLAIM, **kw):
    return verdicts(frame, [claim], **kw).iloc[0]


def test_a_real_effect_is_supported_with_its_interval():
    row = one(synthetic(-0.03))
    assert row["verdict"] == "supported"
    assert row["pairs"] == 30 and row["cells"] == 6 and row["disagreeing_cells"] == []
    assert row["low"] < -0.03 < row["high"] < 0 and row["unit"] == "cells"
    assert row["p_holm"] < 1e-4 and row["level"] == 0.05 and 0 < row["detectable_effect"] < 0.01


def test_the_same_effect_reversed_is_contradicted():
    row = one(synthetic(+0.03))
    assert row["verdict"] == "contradicted" and row["low"] > 0


def test_an_exact_null_reads_no_effect_and_says_it_does_not_vary():
    frame = synthetic(0.0, noise=0.0)
    row = one(frame)
    assert row["verdict"] == "no effect ≥ δ" and row["effect"] == 0 and "no variation" in row["note"]
    assert row["zero_pairs"] == 30 and np.isnan(row["detectable_effect"])
    # a constant difference larger than δ is no evidence either way: said, and not decided
    shifted = frame.assign(gap=frame["gap"] + np.where(frame["method"] == "fair", 0.02, 0.0))
    row = one(shifted)
    assert row["verdict"] == "inconclusive" and "no variation" in row["note"] and row["effect"] == pytest.approx(0.02)


def test_a_tiny_effect_reads_no_effect_of_interest():
    row = one(synthetic(-0.001, noise=0.002))
    assert row["verdict"] == "no effect ≥ δ" and -0.01 < row["low"] < row["high"] < 0.01
    assert row["p_equivalence"] < 0.05


def test_noise_with_few_seeds_is_inconclusive_and_says_what_would_decide_it():
    frame = synthetic(0.0, noise=0.02, seed=4, seeds=range(2), cells=CELLS[:3])
    row = one(frame)
    assert row["verdict"] == "inconclusive"
    assert row["detectable_effect"] > 0.01 and row["units_needed"] > 3
    assert f"{int(row['units_needed'])} cells of this spread would detect δ = 0.01" in row["decide"]
    # the same design with a planted effect well above what it detects is supported
    assert one(synthetic(-2 * row["detectable_effect"], noise=0.02, seed=4, seeds=range(2), cells=CELLS[:3]))[
        "verdict"] == "supported"


def test_cells_that_disagree_by_delta_are_not_supported_and_report_tau2():
    planted = [0.01, -0.01] * 3
    row = one(synthetic(planted, noise=0.001))
    assert row["verdict"] == "inconclusive" and row["tau2"] > 0.5 * 0.01 ** 2
    assert row["pred_low"] < -0.01 and row["pred_high"] > 0.01 and len(row["disagreeing_cells"]) == 3


def test_pooling_over_cells_matches_statsmodels_on_the_same_numbers():
    frame = synthetic([-0.03, -0.01, 0.0, -0.02, -0.04, 0.01], noise=0.006, configs=(0.3, 0.5, 0.7))
    found = evaluate(frame, [CLAIM])
    row = found.table.iloc[0]
    # by hand with pandas: per (cell, seed) the mean over the 3 configurations, then per cell
    fair = frame[frame["method"] == "fair"].set_index(["task_key", "seed", "label"])["gap"]
    twin = frame[frame["method"] == "twin"].assign(label=lambda f: f["label"].str.replace("twin", "fair"))
    diff = fair - twin.set_index(["task_key", "seed", "label"])["gap"]
    per_seed = diff.groupby(level=["task_key", "seed"]).mean()
    means = per_seed.groupby(level="task_key").mean()
    var = per_seed.groupby(level="task_key").var(ddof=1) / 5
    res = combine_effects(means.to_numpy(), var.to_numpy(), method_re="iterated", use_t=True)
    assert row["effect"] == pytest.approx(res.mean_effect_re) and row["tau2"] == pytest.approx(max(res.tau2, 0))
    assert (row["low"], row["high"]) == pytest.approx(tuple(res.conf_int(alpha=0.05, use_t=True)[1]))
    assert row["pairs"] == 90 and row["cells"] == 6
    cells = found.cells["fair-vs-twin"].set_index("cell")
    assert cells.loc["adult · mlp", "effect"] == pytest.approx(means["adult"])
    assert cells.loc["adult · mlp", "configs"] == 3


def test_a_claim_on_two_metrics_becomes_one_row_per_metric():
    frame = synthetic(-0.03).assign(gap_b=lambda f: f["gap"], gap_m=lambda f: f["gap"] + 1)
    mixed = Claim("mixed", "x", "src", Side("fair"), Side("twin"), {"binary": "gap_b", "multiclass": "gap_m"},
                  "lower", ("ratio",), delta=0.01)
    table = verdicts(frame, [mixed]).set_index("id")
    assert list(table.index) == ["mixed:gap_b", "mixed:gap_m"]
    assert table.loc["mixed:gap_b", "cells"] == 4 and table.loc["mixed:gap_m", "cells"] == 2
    assert table.loc["mixed:gap_m", "metric"] == "gap_m"


def test_the_holm_family_is_the_claims_file_not_what_the_suite_ran():
    frame = synthetic(-0.005, noise=0.008, seed=2)
    alone = verdicts(frame, [CLAIM]).iloc[0]
    absent = Claim("absent", "x", "src", Side("fair"), Side("missing"), CLAIM.metric, "lower", ("ratio",), delta=0.01)
    table = verdicts(frame, [CLAIM, absent]).set_index("id")
    assert table.loc["absent", "verdict"] == "untested" and table.loc["absent", "note"] == "not in the suite: missing"
    # the untested claim stays in the family with p = 1: Holm doubles the smallest p
    assert table.loc["fair-vs-twin", "p_holm"] == pytest.approx(min(1.0, 2 * alone["p"]))
    assert table.loc["fair-vs-twin", "level"] == pytest.approx(0.025)


def test_the_packaged_claims_are_one_fixed_family_with_their_deltas():
    from fairsqueeze.methods import METHODS

    claims = load_claims()
    assert len({c.id for c in claims}) == len(claims) >= 6
    for c in claims:
        assert c.source and c.claim and c.fair.method in METHODS
        assert c.twin.method in METHODS or c.id == "fairquantize-vs-curvature-free"
    table = verdicts(synthetic(-0.03), claims)  # none of these methods ran
    assert set(table["verdict"]) == {"untested"} and len(table) == sum(len(c.rows()) for c in claims)
    assert set(table["delta"]) == {0.01}
    assert {"fairalm-vs-unconstrained:deo", "fairalm-vs-unconstrained:eopp1"} <= set(table["id"])


def test_a_claim_may_state_its_own_delta_and_a_bad_one_is_refused(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - {id: c, claim: x, source: s, fair: {method: a}, twin: {method: b}, metric: eodd, "
                    "delta: 0.002}\n")
    assert load_claims(path)[0].delta_for("eodd") == 0.002
    path.write_text("claims:\n  - {id: c, claim: x, source: s, fair: {method: a}, twin: {method: b}, metric: eodd, "
                    "delta: 0}\n")
    with pytest.raises(ValueError, match="delta must be a positive number"):
        load_claims(path)


def test_a_cell_that_disagrees_is_named():
    frame = synthetic(-0.03)
    flip = (frame["task_key"] == "german") & (frame["method"] == "fair")
    frame.loc[flip, "gap"] += 0.08  # on german the fair method is worse
    row = one(frame)
    assert row["disagreeing_cells"] == ["german · mlp"]


def test_an_accuracy_cost_above_the_limit_contradicts_the_claim():
    costly = Claim("c", "Fair lowers the gap at an accuracy cost under 0.1 point", "src", Side("fair"),
                   Side("twin"), CLAIM.metric, "lower", ("ratio",), accuracy_cost=0.001, delta=0.01)
    row = one(synthetic(-0.03), costly)  # it loses 0.005
    assert row["accuracy_cost"] == pytest.approx(0.005, abs=0.001) and row["verdict"] == "contradicted"
    cheap = Claim(**{**costly.__dict__, "accuracy_cost": 0.01})
    assert one(synthetic(-0.03), cheap)["verdict"] == "supported"


def test_the_cancelling_eodd_gets_its_companion_and_a_disagreement_is_said():
    # binary cells: the fair method halves the cancelling EOdd but doubles Fairlearn's equalized-odds difference
    frame = synthetic(-0.03, cells=CELLS[:3] + [("celeba", 2), ("utk", 2)])
    fair = frame["method"] == "fair"
    rng = np.random.default_rng(5)
    frame["eodd"] = frame["gap"]
    frame["deo"] = np.where(fair, 0.20, 0.10) + rng.normal(0, 0.003, len(frame))
    frame["fpr_diff"] = 0.05
    claim = Claim("e", "x", "src", Side("fair"), Side("twin"), {"binary": "eodd", "multiclass": "eodd"}, "lower",
                  ("ratio",))
    found = evaluate(frame, [claim])
    row = found.table.iloc[0]
    assert row["verdict"] == "supported" and row["companion"] == "eodds_diff"
    assert row["companion_verdict"] == "contradicted" and row["companion_effect"] == pytest.approx(0.10, abs=0.005)
    assert "the non-cancelling eodds_diff reads contradicted" in row["note"]
    pairs = found.pairs["e"]
    assert pairs["fair_companion"].iloc[0] == pytest.approx(frame.loc[fair, "deo"].iloc[0])


def test_compression_matching_interpolates_a_bracketing_twin_sweep():
    rows = []
    for s in SEEDS:
        common = {"task_key": "t", "task_label": "t", "model": "m", "seed": s, "num_classes": 2, "flags": [],
                  "dense_key": f"d{s}", "params": {}}
        rows += [{**common, "method": "twin", "label": "twin(k=4)", "compression_ratio": 3.0, "gap": 0.30,
                  "accuracy": 0.70},
                 {**common, "method": "twin", "label": "twin(k=16)", "compression_ratio": 1.0, "gap": 0.10,
                  "accuracy": 0.80},
                 {**common, "method": "fair", "label": "fair", "compression_ratio": 1.5, "gap": 0.1 + 0.001 * s,
                  "accuracy": 0.76}]
    claim = Claim("c", "x", "src", Side("fair"), Side("twin"), CLAIM.metric, "lower", "compression")
    pairs = claim_pairs(pd.DataFrame(rows), claim)
    # ratio 1.5 lies a quarter of the way from 1.0 to 3.0: twin gap 0.10 + 0.25 * 0.20 = 0.15
    assert pairs["twin"].tolist() == pytest.approx([0.15] * 5)
    assert pairs["twin_accuracy"].tolist() == pytest.approx([0.775] * 5)
    outside = pd.DataFrame(rows).assign(compression_ratio=lambda f: f["compression_ratio"].where(f["method"] != "fair", 4.0))
    assert claim_pairs(outside, claim).empty  # no twin configuration brackets ratio 4


def test_degenerate_runs_and_underfit_references_stay_out_of_the_pairs():
    frame = synthetic(-0.03)
    frame.loc[(frame["method"] == "fair") & (frame["seed"] == 0), "flags"] = pd.Series(
        [["degenerate"]] * 6, index=frame.index[(frame["method"] == "fair") & (frame["seed"] == 0)])
    dense = pd.DataFrame([{"key": f"{t}-{s}", "bias_card": {"dense": {"underfit": t == "adult"}}}
                          for t, _ in CELLS for s in SEEDS])
    row = one(frame, dense=dense)
    assert row["pairs"] == 30 - 6 - 4 and row["cells"] == 5  # seed 0 everywhere, and adult's other 4 seeds
    assert row["left_out"] == 6 + 2 * 5 - 1  # the fair and twin runs among them (not the dense ones)


def test_the_report_and_the_leaderboard_show_the_verdicts_and_an_underfit_reference(tmp_path):
    import warnings

    from synthetic_results import make_results
    from fairsqueeze.leaderboard.site import build_leaderboard
    from fairsqueeze.reports.html import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = make_results()
    underfit_key = results.dense["key"].iloc[0]
    results.dense["bias_card"] = [
        {"groups": {0: {"name": "a", "train_support": 10, "val_support": 5, "accuracy": 0.6}}, "base_rates": {0: 0.5},
         "accuracy_gap": 0.1, "informative": True, "rule": "r",
         "dense": {"val_accuracy": 0.6, "constant": False, "underfit": key == underfit_key,
                   "underfit_reasons": ["validation loss still falling at the last of 1 epoch(s)"]}}
        for key in results.dense["key"]]
    page = build_report(results, "synthetic", tmp_path / "report").read_text()
    assert 'id="verdicts"' in page and "FairLRF lowers EOdd against truncated SVD at equal compression" in page
    assert "Underfit reference</b> (seed 0)" in page and "validation loss still falling" in page
    table = pd.read_csv(tmp_path / "report" / "tables" / "verdicts.csv")
    assert len(table) == sum(len(c.rows()) for c in load_claims())
    row = table.set_index("id").loc["fairlrf-vs-truncated-svd"]
    # fairlrf(sr=0.6) at ratio 1.6 lies between svd's 1.4 and 2.0; sr=0.2 at 1.3 has no bracket: seeds 1, 2
    assert row["pairs"] == 2 and row["left_out"] > 0 and row["cells"] == 1
    pairs = pd.read_csv(tmp_path / "report" / "tables" / "pairs" / "fairlrf-vs-truncated-svd.csv")
    assert len(pairs) == 2 and set(pairs["seed"]) == {1, 2} and pairs["fair_run"].notna().all()
    assert 'href="tables/pairs/fairlrf-vs-truncated-svd.csv"' in page
    # the verdicts are the first section of both pages
    assert page.index("<section") == page.index('<section id="verdicts"')
    assert (tmp_path / "report" / "tables" / "paired_deltas.csv").exists()
    board = build_leaderboard(results, tmp_path / "board").read_text()
    assert board.index("<section") == board.index('<section id="verdicts"') < board.index('id="board"')
    assert "Left out of the ranking" in board and "(seed 0)" in board


def test_idle_pairs_leave_the_pairs_and_most_idle_is_not_exercised():
    frame = synthetic(-0.03)
    idle = (frame["task_key"] == "adult") & (frame["method"] != "dense")
    frame.loc[idle, "flags"] = pd.Series([["no_effect"]] * int(idle.sum()), index=frame.index[idle])
    frame.loc[idle, "gap"] = frame.loc[idle, "seed"].map(lambda s: 0.05 + 0.05 * s)  # the dense gap, both sides
    row = one(frame)
    assert row["pairs"] == 25 and row["idle_pairs"] == 5 and row["cells"] == 5 and "5 idle pair(s)" in row["note"]
    # one side alone without effect still pairs: it is a result about the other side
    only_twin = synthetic(-0.03)
    twin = (only_twin["task_key"] == "adult") & (only_twin["method"] == "twin")
    only_twin.loc[twin, "flags"] = pd.Series([["no_effect"]] * 5, index=only_twin.index[twin])
    assert one(only_twin)["pairs"] == 30
    # the dense model as the twin: a fair run without effect is idle against it too
    against_dense = Claim("d", "x", "src", Side("fair"), Side("dense"), CLAIM.metric, "lower", (), delta=0.01)
    frame = synthetic(-0.03)
    fair = (frame["task_key"] == "adult") & (frame["method"] == "fair")
    frame.loc[fair, "flags"] = pd.Series([["no_effect"]] * 5, index=frame.index[fair])
    row = one(frame, against_dense)
    assert row["idle_pairs"] == 5 and row["pairs"] == 25
    # most pairs idle: the claim was not exercised, with the share
    most = synthetic(-0.03)
    idle = most["task_key"].isin(["adult", "compas", "german", "celeba"]) & (most["method"] != "dense")
    most.loc[idle, "flags"] = pd.Series([["no_effect"]] * int(idle.sum()), index=most.index[idle])
    row = one(most)
    assert row["verdict"] == "not exercised" and "20 of 30 pairs idle (67%)" in row["note"]


def test_the_report_shows_each_method_against_the_dense_model_of_the_same_seed(tmp_path):
    import warnings

    from synthetic_results import make_results
    from fairsqueeze.reports.html import build_report
    from fairsqueeze.reports.stats import estimate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = make_results()
    page = build_report(results, "synthetic", tmp_path).read_text()
    assert page.count("Change against the dense model of the same seed") == 1
    done = results.done()
    dense = done[done["method"] == "dense"].set_index("seed")["accuracy"]
    svd = done[done["label"] == "svd(k=4)"].set_index("seed")["accuracy"]
    est = estimate((svd - dense).to_numpy())  # by hand: three paired differences
    assert f"<td>{est.mean:+.3f} ± {est.half_width:.3f}</td>" in page


def test_runs_whose_stored_predictions_equal_the_dense_model_make_idle_pairs():
    import warnings

    from synthetic_results import make_results
    from fairsqueeze.reports.verdicts import evaluation, unchanged_runs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = make_results()
    done = results.done()
    assert unchanged_runs(results, done) == set()  # every synthetic run draws its own predictions
    # fairlrf(sr=0.6) and svd on seed 1 predict exactly what the dense model of seed 1 predicts
    dense = done[(done["method"] == "dense") & (done["seed"] == 1)]["run_key"].iloc[0]
    same = set(done[(done["seed"] == 1) & done["label"].isin(["fairlrf(sparsity_rate=0.6)", "svd(k=4)",
                                                              "svd(k=16)"])]["run_key"])
    stored = results.predictions
    results.predictions = lambda key, split: stored(dense if key in same else key, split)
    assert unchanged_runs(results, done) == same
    found = evaluation(results)
    row = found.table.set_index("id").loc["fairlrf-vs-truncated-svd"]
    # of the three pairs (seeds 0, 1, 2), seed 1's is idle: neither side changed a test prediction
    assert row["idle_pairs"] == 1 and row["pairs"] == 2
    pairs = found.pairs["fairlrf-vs-truncated-svd"]
    assert pairs.loc[pairs["idle"], "seed"].tolist() == [1]


def test_a_claim_whose_runs_were_all_left_out_says_so_not_that_they_are_missing():
    frame = synthetic(-0.03)
    dense = pd.DataFrame([{"key": f"{t}-{s}", "bias_card": {"dense": {"underfit": True}}} for t, _ in CELLS
                          for s in SEEDS])
    row = one(frame, dense=dense)
    assert row["verdict"] == "untested" and row["left_out"] == 60
    assert row["note"] == "every run of fair, twin left out (degenerate, or on an underfit dense reference)"


def test_a_side_selects_runs_by_the_rule_that_named_their_protected_group():
    """Fair runs protecting the lower-TPR group lower the gap; the same method protecting the
    lower-accuracy group raises it. Each rule's row sees its own runs only."""
    tpr, acc = synthetic(-0.03, seed=1), synthetic(+0.03, seed=2)
    tpr["info"] = [{"protect": {"rule": "tpr"}} if m == "fair" else {} for m in tpr["method"]]
    acc = acc[acc["method"] == "fair"].assign(info=[{"protect": {"rule": "accuracy"}}] * int((acc["method"] == "fair").sum()),
                                              run_key=lambda f: "a" + f["run_key"], label=lambda f: "a" + f["label"])
    frame = pd.concat([tpr, acc], ignore_index=True)
    rule = {r: Claim(f"fair-{r}", "c", "s", Side("fair", protect=r), Side("twin"), {"binary": "gap", "multiclass": "gap"},
                     "lower", ("ratio",), delta=0.01) for r in ("tpr", "accuracy")}
    assert one(frame, rule["tpr"])["verdict"] == "supported"
    assert one(frame, rule["accuracy"])["verdict"] == "contradicted"
    assert one(frame, rule["tpr"])["pairs"] == one(frame, rule["accuracy"])["pairs"] == 30
    # without a rule both kinds pair: twice the runs, averaged per seed into no effect
    assert one(frame)["pairs"] == 60 and abs(one(frame)["effect"]) < 0.005
    # a run stored before the rule was recorded used the default (accuracy)
    old = tpr.assign(info=[{}] * len(tpr))
    assert one(old, rule["accuracy"])["verdict"] == "supported"
    row = one(old, rule["tpr"])
    assert row["verdict"] == "untested"
    assert row["note"] == "no run of fair protects the group named by the tpr rule (its runs: the accuracy rule)"


def test_a_claim_side_with_an_unknown_protect_rule_is_refused(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - {id: x, claim: c, source: s, fair: {method: fairlrf, protect: fpr},"
                    " twin: {method: truncated_svd}, metric: eodd}\n")
    with pytest.raises(ValueError, match="fair.protect must be one of accuracy, tpr"):
        load_claims(path)


def test_the_packaged_equal_opportunity_claims_come_in_both_group_rules():
    claims = {c.id: c for c in load_claims()}
    for cid in ("fairlrf-vs-truncated-svd", "fairlrf-vs-slr-w", "fairlrf-vs-slr-a", "fairquantize-vs-curvature-free",
                "fairquantize-vs-int8-ptq"):
        assert claims[cid].fair.protect == "tpr" and claims[f"{cid}-paper-rule"].fair.protect == "accuracy"
        assert claims[cid].metric == claims[f"{cid}-paper-rule"].metric


def test_runs_that_differ_only_in_their_group_rule_are_two_configurations_not_one():
    from fairsqueeze.reports.data import current_definitions

    frame = synthetic(-0.03)
    fair = frame[frame["method"] == "fair"]
    both = pd.concat([frame.assign(info=[{"protect": {"rule": "tpr"}}] * len(frame)),
                      fair.assign(info=[{"protect": {"rule": "accuracy"}}] * len(fair), run_key="p" + fair["run_key"])],
                     ignore_index=True)
    kept = current_definitions(both)
    assert len(kept) == len(both)
    # the same rule stored twice under another key is still one configuration
    again = pd.concat([both, fair.assign(info=[{"protect": {"rule": "tpr"}}] * len(fair), run_key="q" + fair["run_key"])])
    assert len(current_definitions(again)) == len(both)


def test_a_row_for_multiclass_cells_says_there_is_none_rather_than_no_like_for_like_configurations():
    claim = Claim("c", "c", "s", Side("fair"), Side("twin"), {"binary": "gap", "multiclass": "gap2"}, "lower", ("ratio",),
                  delta=0.01)
    binary_only = synthetic(-0.03, cells=[c for c in CELLS if c[1] == 2])
    table = verdicts(binary_only, [claim]).set_index("id")
    assert table.loc["c:gap", "verdict"] == "supported"
    assert table.loc["c:gap2", "note"] == "no multiclass cell in these results (this row's metric is for multiclass cells)"
