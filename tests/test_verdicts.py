"""Verdicts on synthetic paired data with a known effect, a reversed one and noise; matching
by parameters and by compression ratio; runs left out of the pairs; the packaged claims."""
import numpy as np
import pandas as pd
import pytest

from fairsqueeze.reports.verdicts import Claim, Side, claim_pairs, load_claims, verdicts

CELLS = [("adult", 2), ("compas", 2), ("german", 2), ("digits-mlp", 10), ("digits-vgg", 10), ("celeba", 2)]
SEEDS = range(5)


def synthetic(effect, noise=0.004, seed=0, ratio_pairs=False):
    """Runs of a dense model, a fair method and its twin on 6 cells x 5 seeds. The dense gap
    varies by seed (0.05 to 0.25); the twin adds 0.02 to it, the fair method ``effect`` more,
    each with its own noise. Accuracy: the twin 0.80, the fair method 0.795."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, (task, k) in enumerate(CELLS):
        for s in SEEDS:
            base = 0.05 + 0.05 * s + 0.01 * c
            common = {"task_key": task, "task_label": task, "model": "mlp", "seed": s, "num_classes": k, "flags": [],
                      "dense_key": f"{task}-{s}"}
            rows.append({**common, "method": "dense", "label": "dense", "params": {}, "gap": base, "accuracy": 0.81,
                         "compression_ratio": 1.0})
            twin = base + 0.02 + rng.normal(0, noise)
            rows.append({**common, "method": "twin", "label": "twin(0.5)", "params": {"ratio": 0.5}, "gap": twin,
                         "accuracy": 0.80 + rng.normal(0, 0.001), "compression_ratio": 2.0})
            rows.append({**common, "method": "fair", "label": "fair(0.5)", "params": {"ratio": 0.5},
                         "gap": twin + effect + rng.normal(0, noise), "accuracy": 0.795 + rng.normal(0, 0.001),
                         "compression_ratio": 2.0})
    return pd.DataFrame(rows)


CLAIM = Claim("fair-vs-twin", "Fair lowers the gap against its twin", "a paper", Side("fair"), Side("twin"),
              {"binary": "gap", "multiclass": "gap"}, "lower", ("ratio",))


def one(frame, claim=CLAIM, **kw):
    return verdicts(frame, [claim], **kw).iloc[0]


def test_a_known_effect_is_supported_with_its_interval():
    row = one(synthetic(-0.03))
    assert row["verdict"] == "supported"
    assert row["pairs"] == 30 and row["cells"] == 6 and row["disagreeing_cells"] == []
    assert row["low"] < -0.03 < row["high"] and row["high"] < 0
    assert row["p_holm"] < 1e-6 and row["detectable_effect"] < 0.005


def test_a_reversed_effect_is_contradicted():
    row = one(synthetic(+0.03))
    assert row["verdict"] == "contradicted" and row["effect"] > 0


def test_noise_is_inconclusive_and_says_what_it_could_have_detected():
    row = one(synthetic(0.0, noise=0.02, seed=4))
    assert row["verdict"] == "inconclusive" and row["p_holm"] >= 0.05
    # a true effect larger than the detectable one would be found: check it is supported
    mde = row["detectable_effect"]
    assert 0 < mde < 0.03
    assert one(synthetic(-2 * mde, noise=0.02, seed=4))["verdict"] == "supported"


def test_pairing_removes_the_seed_variation_of_the_dense_model():
    frame = synthetic(-0.01)
    pairs = claim_pairs(frame, CLAIM)
    # the unpaired spread of the fair gaps is dominated by the dense model's seeds ...
    assert pairs["fair"].std() > 5 * (pairs["fair"] - pairs["twin"]).std()
    # ... and pairing finds the effect that an unpaired comparison of means could not
    assert one(frame)["verdict"] == "supported"


def test_holm_across_the_family_can_turn_a_verdict_inconclusive():
    frame = synthetic(-0.005, noise=0.008, seed=2)
    alone = verdicts(frame, [CLAIM]).iloc[0]
    assert alone["verdict"] == "supported" and 0.005 < alone["p"] < 0.05
    # nine other claims with the same p: Holm multiplies the smallest by 10
    family = [Claim(f"c{i}", "same", "src", Side("fair"), Side("twin"), CLAIM.metric, "lower", ("ratio",))
              for i in range(10)]
    table = verdicts(frame, family)
    assert table["p_holm"].tolist() == pytest.approx([10 * alone["p"]] * 10)
    assert set(table["verdict"]) == {"inconclusive"}


def test_a_cell_that_disagrees_is_named():
    frame = synthetic(-0.03)
    flip = (frame["task_key"] == "german") & (frame["method"] == "fair")
    frame.loc[flip, "gap"] += 0.08  # on german the fair method is worse
    row = one(frame)
    assert row["disagreeing_cells"] == ["german · mlp"]


def test_an_accuracy_cost_above_the_limit_contradicts_the_claim():
    costly = Claim("c", "Fair lowers the gap at an accuracy cost under 0.1 point", "src", Side("fair"),
                   Side("twin"), CLAIM.metric, "lower", ("ratio",), accuracy_cost=0.001)
    row = one(synthetic(-0.03), costly)  # it loses 0.005
    assert row["accuracy_cost"] == pytest.approx(0.005, abs=0.001) and row["verdict"] == "contradicted"
    cheap = Claim(**{**costly.__dict__, "accuracy_cost": 0.01})
    assert one(synthetic(-0.03), cheap)["verdict"] == "supported"


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


def test_a_claim_without_its_methods_is_untested_and_says_which_is_missing():
    frame = synthetic(-0.03)
    claim = Claim("c", "x", "src", Side("fair"), Side("absent"), CLAIM.metric, "lower", ())
    row = one(frame[frame["method"] != "absent"], claim)
    assert row["verdict"] == "untested" and row["note"] == "not in the suite: absent"


def test_the_packaged_claims_name_their_sources_and_known_methods():
    from fairsqueeze.core.registry import METHODS

    claims = load_claims()
    assert len({c.id for c in claims}) == len(claims) >= 6
    for c in claims:
        assert c.source and c.claim and c.fair.method in METHODS
        assert c.twin.method in METHODS or c.id == "fairquantize-vs-curvature-free"


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
    assert len(table) == len(load_claims())
    row = table.set_index("id").loc["fairlrf-vs-truncated-svd"]
    # fairlrf(sr=0.6) at ratio 1.6 lies between svd's 1.4 and 2.0; sr=0.2 at 1.3 has no bracket: seeds 1, 2
    assert row["pairs"] == 2 and row["left_out"] > 0
    assert (tmp_path / "report" / "tables" / "paired_deltas.csv").exists()
    board = build_leaderboard(results, tmp_path / "board").read_text()
    # a summary of the verdicts above the ranking, linking to the full table below it
    assert board.index('href="#verdicts">the verdict table') < board.index('id="board"') < board.index('id="verdicts"')
    assert "Left out of the ranking" in board and "(seed 0)" in board


def test_a_pair_where_neither_side_changed_a_prediction_is_left_out():
    frame = synthetic(-0.03)
    idle = (frame["task_key"] == "adult") & (frame["method"] != "dense")
    frame.loc[idle, "flags"] = pd.Series([["no_effect"]] * int(idle.sum()), index=frame.index[idle])
    frame.loc[idle, "gap"] = frame.loc[idle, "seed"].map(lambda s: 0.05 + 0.05 * s)  # the dense gap, both sides
    row = one(frame)
    assert row["pairs"] == 25 and row["cells"] == 5 and "5 pair(s) where neither side changed" in row["note"]
    # one side alone without effect still pairs: it is a result about the other side
    only_twin = synthetic(-0.03)
    twin = (only_twin["task_key"] == "adult") & (only_twin["method"] == "twin")
    only_twin.loc[twin, "flags"] = pd.Series([["no_effect"]] * 5, index=only_twin.index[twin])
    assert one(only_twin)["pairs"] == 30


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
