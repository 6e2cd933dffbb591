"""Reports and leaderboard from stored results: numbers against independent oracles
(SciPy, Fairlearn, Optuna's hypervolume, Demšar's table), escaping, exports, terminal."""
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthetic_results import make_results
from fairsqueeze.leaderboard import ranking, significance
from fairsqueeze.reports.hypervolume import hypervolume, reference_point
from fairsqueeze.metrics import compute_metrics
from fairsqueeze.reports import export
from fairsqueeze.reports.columns import EODDS
from fairsqueeze.reports.stats import estimate
from fairsqueeze.reports.tables import comparisons
from fairsqueeze.reports.terminal import WIDTH, headline_tables

BINARY, MULTI = ("digits: parity / planted", 2), ("faces: age / race", 5)


@pytest.fixture(scope="module")
def results():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_results(tasks=(BINARY, MULTI))


@pytest.fixture(scope="module")
def tables(results):
    return {c.num_classes: c for c in comparisons(results.done())}


def test_estimate_is_the_student_t_interval():
    est = estimate([1.0, 2.0, 3.0, float("nan")])
    # hand: mean 2, sd 1, t_{0.975,2} = 4.3027 -> 4.3027 / sqrt(3) = 2.4841
    assert (est.mean, est.n) == (2.0, 3)
    assert est.half_width == pytest.approx(2.4841, abs=1e-4)
    assert math.isnan(estimate([0.5]).half_width) and estimate([]).n == 0


def test_hypervolume_by_hand_and_against_optuna():
    assert reference_point(2) == (0.5, 1.0)
    # one point: (0.9 - 0.5) * (1 - 0.1) / (0.5 * 1)
    assert hypervolume([0.9], [0.1], 2) == pytest.approx(0.72)
    # two points, one dominated point adds nothing: (0.3 * 1 + 0.1 * 0.5) / 0.5
    assert hypervolume([0.8, 0.9, 0.7], [0.0, 0.5, 0.6], 2) == pytest.approx(0.7)
    assert hypervolume([0.4], [0.0], 2) == 0.0  # below chance adds nothing
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(1)
    for k in (2, 5):
        u, g = rng.uniform(1 / k, 1, 12), rng.uniform(0, 1, 12)
        u_ref, g_ref = reference_point(k)
        oracle = compute_hypervolume(np.c_[-u, g], np.array([-u_ref, g_ref])) / ((1 - u_ref) * g_ref)
        assert hypervolume(u, g, k) == pytest.approx(oracle)


def test_cells_are_seed_means_with_cis_and_fairlearn_gaps(results, tables):
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    comp = tables[2]
    row = next(r for r in comp.rows if r.label == "svd(k=4)")
    per_seed = []
    for seed, key in row.runs:
        p = results.predictions(key, "test")
        per_seed.append({**compute_metrics(p["y"], p["y_pred"], p["s"], num_classes=2),
                         "eodds": equalized_odds_difference(p["y"], p["y_pred"], sensitive_features=p["s"]),
                         "dp": demographic_parity_difference(p["y"], p["y_pred"], sensitive_features=p["s"])})
    frame = pd.DataFrame(per_seed)
    assert row.seeds == 3 and row.values["accuracy"].n == 3
    assert row.values["accuracy"].mean == pytest.approx(frame["accuracy"].mean())
    assert row.values["accuracy"].half_width == pytest.approx(
        stats.t.ppf(0.975, 2) * frame["accuracy"].std(ddof=1) / math.sqrt(3))
    assert row.values[EODDS].mean == pytest.approx(frame["eodds"].mean())  # Fairlearn's definition
    assert row.values["dp_diff"].mean == pytest.approx(frame["dp"].mean())


def test_change_against_the_dense_model_of_the_same_seed(results, tables):
    comp = tables[2]
    dense = {s: k for s, k in next(r for r in comp.rows if r.method == "dense").runs}
    row = next(r for r in comp.rows if r.label == "slr_w")
    m = results.metrics
    diffs = [m.loc[k, "accuracy[g=0]"] - m.loc[dense[s], "accuracy[g=0]"] for s, k in row.runs]
    assert row.values["change_acc[g=0]"].mean == pytest.approx(np.mean(diffs))
    assert comp.rows[0].method == "dense" and comp.rows[0].values["worst_group_change"].mean == 0


def test_binary_and_multiclass_columns(tables):
    binary = [c.key for c in tables[2].columns]
    assert {"deo", "fpr_diff", EODDS, "dp_diff"} <= set(binary)
    assert not {"eopp0", "eopp1", "eodd"} & set(binary)  # three copies of one number when K = 2
    multi = {c.key: c for c in tables[5].columns}
    assert {"eopp0", "eopp1", "eodd"} <= set(multi) and multi["eodd_sum"].detail == "detail-sum"
    assert "deo" not in multi
    from fairsqueeze.metrics import metric_def

    assert multi["eopp1"].description == metric_def("eopp1").description


def test_best_is_never_a_degenerate_row(results):
    comp = comparisons(results.done())[0]
    collapse = next(r for r in comp.rows if r.method == "collapse")
    assert collapse.values["deo"].mean == 0 and not collapse.ranked
    assert "deo" not in collapse.best and any("deo" in r.best for r in comp.rows)
    # with the flag removed, the constant model would be "fairest": the flag is what stops it
    done = results.done()
    done["flags"] = [[] for _ in range(len(done))]
    unflagged = next(r for r in comparisons(done)[0].rows if r.method == "collapse")
    assert "deo" in unflagged.best


def test_exports_round_trip(tables, tmp_path):
    comp = tables[2]
    paths = export.write_comparison(comp, tmp_path)
    assert sorted(p.suffix for p in paths) == [".csv", ".json", ".md", ".tex"]
    csv = pd.read_csv(next(p for p in paths if p.suffix == ".csv"))
    assert csv["accuracy"].to_numpy() == pytest.approx(comp.numeric()["accuracy"].to_numpy())
    assert list(csv["seeds"]) == [r.seeds for r in comp.rows]
    tex = next(p for p in paths if p.suffix == ".tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "±" in tex
    md = next(p for p in paths if p.suffix == ".md").read_text()
    assert "| svd(k=4) (n=3)" in md and "[degenerate]" in md


def test_terminal_headline_fits_120_columns(results):
    text = headline_tables(comparisons(results.done()))
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert "TPR gap" in text and "EOpp1" in text and "degenerate" in text and "worst Δacc" in text


def test_report_escapes_user_text_and_embeds_everything(results, tmp_path):
    from fairsqueeze.reports.html import build_report

    page = build_report(results, "s<x>", tmp_path).read_text()
    assert "broken&lt;script&gt;" in page and "<b>boom</b>" not in page and "s&lt;x&gt;" in page
    assert "http://" not in page and "https://" not in page  # offline: nothing fetched
    assert len(re.findall(r'<img class="pareto"', page)) == 2
    assert len(re.findall(r'<img class="ablation', page)) == 4  # k and sparsity_rate, per table
    assert page.count('id="run-') == len(results.runs["run_key"].unique())


def test_ranking_is_by_tier_and_leaves_flagged_runs_out(results):
    runs = ranking.usable_runs(results.done())
    assert "collapse" not in set(runs["method"])
    assert ranking.tier_of(1.0) == "<1.05" and ranking.tier_of(1.3) == "1.3–1.7" and ranking.tier_of(2.0) == ">1.7"
    scores = ranking.scores_frame(ranking.cell_scores(runs))
    for (_, tier, _), cell in scores.groupby(["metric", "tier", "cell"]):
        ratios = runs[runs["method"].isin(cell["method"])]
        assert (ratios[ratios["tier"] == tier]["compression_ratio"].map(ranking.tier_of) == tier).all()
    board = ranking.leaderboard_table(scores)
    mid = board[(board["metric"] == "equalized odds") & (board["tier"] == "1.3–1.7")].set_index("method")
    # fairlrf has the largest hypervolume in both cells -> rank 1, wins every comparison
    assert mid.loc["fairlrf", "mean_rank"] == 1 and mid.loc["fairlrf", "win_rate"] == 1
    assert mid.loc["truncated_svd", "win_rate"] == 0


def test_win_rate_by_hand():
    frame = pd.DataFrame({"metric": "m", "tier": "t", "cell": ["a", "a", "a", "b", "b"],
                          "method": ["x", "y", "z", "x", "y"], "mean": [0.5, 0.5, 0.1, 0.2, 0.9]})
    win = ranking.win_rate(frame)
    # cell a: x beats z, ties y -> 1.5/2; cell b: x loses -> 0
    assert win.tolist() == pytest.approx([0.75, 0.75, 0.0, 0.0, 1.0])


def test_friedman_and_nemenyi_against_demsar():
    rng = np.random.default_rng(0)
    rows = [{"metric": "m", "tier": "t", "cell": f"c{i}", "method": m, "mean": v}
            for i in range(8) for m, v in zip("abc", rng.random(3) + [0.3, 0.0, -0.3])]
    result = significance.friedman(pd.DataFrame(rows), "m", "t")
    wide = pd.DataFrame(rows).pivot(index="cell", columns="method", values="mean")
    assert result.p_value == pytest.approx(stats.friedmanchisquare(wide["a"], wide["b"], wide["c"]).pvalue)
    # Demšar (2006), Table 5: q_0.05 = 2.343 for k = 3
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 8)), abs=1e-3)
    assert result.mean_ranks["a"] < result.mean_ranks["c"]
    assert significance.cd_diagram(result)
    short = significance.friedman(pd.DataFrame(rows[:3]), "m", "t")  # one cell
    assert math.isnan(short.p_value) and "needs" in short.note


def test_twin_test_pairs_seeds_and_states_p(results):
    scores = ranking.scores_frame(ranking.cell_scores(ranking.usable_runs(results.done())))
    tests = [t for t in significance.twin_tests(scores) if t.metric == "equalized odds"]
    pairs = {(t.fair, t.twin) for t in tests}
    assert pairs == {("fairlrf", "slr_w"), ("fairlrf", "truncated_svd")}
    svd = next(t for t in tests if t.twin == "truncated_svd")
    assert svd.pairs == 6 and svd.mean_difference > 0  # 2 cells x 3 seeds
    assert svd.p_value == pytest.approx(2 / 2**6)  # exact two-sided: all six differences positive


def test_store_round_trip_gives_the_same_tables(results, tmp_path):
    from synthetic_results import write_store
    from fairsqueeze.reports.data import load
    from fairsqueeze.store import Store

    store = Store(f"sqlite:///{tmp_path}/s.db")
    write_store(results, store)
    loaded = load(store, "synthetic")
    assert set(loaded.runs["status"]) == {"done", "failed"}
    before = {(c.task_label, r.label): r.values["accuracy"].mean for c in comparisons(results.done()) for r in c.rows}
    after = {(c.task_label, r.label): r.values["accuracy"].mean for c in comparisons(loaded.done()) for r in c.rows}
    assert after == pytest.approx(before)
    key = loaded.runs["run_key"].iloc[0]
    assert (loaded.predictions(key, "test")["y_pred"] == results.predictions(key, "test")["y_pred"]).all()


def test_cli_writes_both_pages_for_a_real_suite(isolated, capsys):
    """A real stored suite (dense + a swept SVD on the file-less digits task) through the
    commands a user types: run prints the headline; report and leaderboard write pages."""
    from tiny import tiny_suite
    from fairsqueeze.cli import main
    from fairsqueeze.reports.terminal import WIDTH
    from fairsqueeze.runner import Runner, resolve_device
    from fairsqueeze.store import Store

    db = f"sqlite:///{isolated}/r.db"
    suite = tiny_suite(["dense", {"name": "truncated_svd", "params": {"layer": "fc2"}, "sweep": {"k": [2, 8]}}],
                       seeds=(0, 1))
    Runner(Store(db), isolated / "data", resolve_device("cpu")).run(suite)
    assert main(["show", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "== digits: parity / planted (test, mlp(hidden=[32, 16]), suite tiny) ==" in shown and "truncated_svd" in shown
    headline, in_card = [], False
    for line in shown.splitlines():  # the headline tables, not the bias cards printed after them
        in_card = line.startswith("-- bias card") or (in_card and not line.startswith("== "))
        headline += [] if in_card else [line]
    assert len(headline) > 5 and max(len(line) for line in headline) <= WIDTH
    assert main(["report", "tiny", "--db", db, "--out", str(isolated / "rep")]) == 0
    assert main(["leaderboard", "--db", db, "--out", str(isolated / "lb")]) == 0
    out = capsys.readouterr().out
    assert f"report: {isolated / 'rep' / 'index.html'}" in out and f"leaderboard: {isolated / 'lb' / 'index.html'}" in out
    page = (isolated / "rep" / "index.html").read_text()
    assert page.count('class="ablation') == 1 and "Bias card" in page and "confusion matrix, group 0" in page
    board = (isolated / "lb" / "index.html").read_text()
    assert "truncated_svd" in board and "dense" in board
    assert (isolated / "rep" / "tables" / "runs.csv").exists()
    assert main(["report", "nosuch", "--db", db]) == 2


def _registry_catalogue() -> pd.DataFrame:
    """What the store records with each run: the method's family and registry position."""
    from fairsqueeze.methods import METHODS

    names = list(METHODS.names())
    return pd.DataFrame({"method": names, "family": [METHODS.get(m).family for m in names],
                         "method_order": range(len(names))})


def test_every_registered_method_has_its_own_colour_that_stands_out_on_white():
    import colorsys
    import itertools

    from coloraide import Color
    from matplotlib.colors import to_rgb

    from fairsqueeze.reports.palette import DENSE_COLOUR, palette

    catalogue = _registry_catalogue()
    colours = palette(catalogue)
    methods = [m for m in catalogue["method"] if m != "dense"]
    assert set(methods) <= set(colours) and colours["dense"] == DENSE_COLOUR
    for a, b in itertools.combinations(methods, 2):  # CIEDE2000: ~10 is a difference anyone sees
        assert Color(colours[a]).delta_e(Color(colours[b]), method="2000") > 10, (a, b, colours[a], colours[b])
    for m in methods:
        _, _, saturation = colorsys.rgb_to_hls(*to_rgb(colours[m]))
        assert saturation > 0.3, (m, colours[m])  # not grey
        assert Color(colours[m]).delta_e(Color("white"), method="2000") > 30, (m, colours[m])  # not pale
    # one family, one hue: a fair method and its twin differ in lightness, not in hue
    hue = {m: Color(colours[m]).convert("lch")["hue"] for m in methods}
    assert abs(hue["fairquantize"] - hue["int8_ptq"]) < 15
    assert abs(hue["fairalm"] - hue["l2_penalty"]) < 15
    assert abs(hue["fairprune"] - hue["bifp"]) < 15 and abs(hue["fairprune"] - hue["fairquantize"]) > 30


def test_colours_come_from_the_store_alone_and_fall_back_without_families():
    from fairsqueeze.reports.palette import palette

    full = palette(_registry_catalogue())
    # a page of a few methods has the colours the full store gives them
    sub = _registry_catalogue().iloc[[3, 5, 9]]
    assert all(full[m] == c for m, c in palette(_registry_catalogue()).items() if m in set(sub["method"]))
    # runs stored without family/order: one family "other", name order, still distinct colours
    bare = palette(pd.DataFrame({"method": ["zeta", "alpha", "mid"]}))
    assert len({bare[m] for m in ("zeta", "alpha", "mid")}) == 3 and bare["alpha"] == palette(pd.DataFrame({"method": ["alpha"]}))["alpha"]


def test_the_reading_side_imports_nothing_that_runs():
    import subprocess
    import sys

    code = ("import sys, fairsqueeze.reports.html, fairsqueeze.leaderboard.site, fairsqueeze.reports.data;"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['fairsqueeze', 'runner'], "
            "['fairsqueeze', 'worker'], ['fairsqueeze', 'training'], ['fairsqueeze', 'methods'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_near_chance_row_is_never_bold_on_a_front_or_best():
    """An entry that predicts one class but for a few rows (accuracy ≈ the majority rate,
    gaps ≈ 0) is not constant: the engine does not flag it, the reading side does; without
    the flag it would be the fairest row and on the front."""
    from synthetic_results import ENTRIES
    from fairsqueeze.reports import chance
    from fairsqueeze.reports.figures import pareto_figure
    from fairsqueeze.reports.html import best_tradeoff, front_labels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(entries=[*ENTRIES, ("coin", "coin", {}, {}, "near_constant", 1.2)], seeds=(0, 1), failed=False)
    rates = made.majority_rates()
    (task,) = rates
    pred = made.predictions(made.runs["run_key"].iloc[0], "test")
    assert rates[task]["overall"] == pytest.approx(np.bincount(pred["y"]).max() / len(pred["y"]))
    assert rates[task][1] == pytest.approx(np.bincount(pred["y"][pred["s"] == 1]).max() / (pred["s"] == 1).sum())

    comp = comparisons(made.done())[0]
    coin = next(r for r in comp.rows if r.method == "coin")
    assert coin.flags.get("near_chance") == 2 and "degenerate" not in coin.flags and not coin.ranked
    assert not coin.best and coin.label not in front_labels(comp) and best_tradeoff(comp).method != "coin"
    assert all(not r.flags.get("near_chance") for r in comp.rows if r.method != "coin")
    fig = pareto_figure(comp, made.colours())
    filled = [c for c in fig.axes[0].collections if c.get_gid() == "points:coin"]
    assert filled and all(np.all(c.get_facecolor()[:, 3] == 0) for c in filled)  # hollow

    # switched off (no majority rates known), the coin-flip model is bold and on the front
    done = made.done()
    done["flags"] = [[f for f in fl if f != chance.FLAG] for fl in done["flags"]]
    comp_off = comparisons(done)[0]
    coin_off = next(r for r in comp_off.rows if r.method == "coin")
    assert coin_off.ranked and {"deo", "dp_diff"} <= coin_off.best and coin_off.label in front_labels(comp_off)
