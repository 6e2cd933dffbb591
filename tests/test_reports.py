"""Reports and leaderboard from stored results: numbers against independent oracles
(SciPy, Fairlearn, Optuna's hypervolume, Demšar's table), escaping, exports, terminal."""
import dataclasses
import html
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthetic_results import make_results
from fairsqueeze.reports.verdicts import load_claims, twin_map
from fairsqueeze.leaderboard import ranking, significance
from fairsqueeze.reports.hypervolume import hypervolume, reference_point
from fairsqueeze.measure.metrics import compute_metrics
from fairsqueeze.reports import export
from fairsqueeze.reports.columns import EODDS
from fairsqueeze.reports.stats import estimate
from fairsqueeze.reports.tables import comparisons
from fairsqueeze.reports.terminal import WIDTH, headline_tables

BINARY, MULTI = ("digits: parity / planted", 2), ("faces: age / race", 5)

PACKAGED_TWINS = twin_map(load_claims())  # the packaged claims file's fair -> twin methods


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
    from fairsqueeze.measure.metrics import metric_def

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
    pages = "".join(p.read_text() for p in (tmp_path / "runs").glob("*.html"))
    assert pages.count('id="run-') == len(results.runs["run_key"].unique()) and 'id="run-' not in page
    for href, key in re.findall(r'href="(runs/[0-9a-f]+\.html)#run-([0-9a-f]+)"', page):  # every run link lands
        assert f'id="run-{key}"' in (tmp_path / href).read_text()


def test_ranking_is_by_tier_and_leaves_flagged_runs_out(results):
    runs = ranking.usable_runs(results.done())
    assert "collapse" not in set(runs["method"])
    assert ranking.tier_of(1.0) == "<1.05" and ranking.tier_of(1.3) == "1.3–1.7" and ranking.tier_of(2.0) == ">1.7"
    scores = ranking.scores_frame(ranking.cell_scores(runs))
    for (_, tier, _), cell in scores.groupby(["metric", "tier", "cell"]):
        ratios = runs[runs["method"].isin(cell["method"])]
        assert (ratios[ratios["tier"] == tier]["compression_ratio"].map(ranking.tier_of) == tier).all()
    board = ranking.leaderboard_table(scores, min_shared=1)  # two cells: the mechanics, not the 5-cell rule
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
    # four cells: no test and no diagram, and the note says how many cells there are
    four = significance.friedman(pd.DataFrame(rows[:12]), "m", "t")
    assert math.isnan(four.p_value) and four.note.startswith("4 common (task, model) cell(s)")
    assert significance.cd_diagram(four) is None
    assert not math.isnan(significance.friedman(pd.DataFrame(rows[:15]), "m", "t").p_value)  # five cells


def test_a_method_alone_in_its_tier_is_listed_not_ranked_and_tiers_sort_by_ratio():
    frame = pd.DataFrame({"metric": "m", "tier": [">1.7", "1.05–1.3", "1.05–1.3", "<1.05", "1.3–1.7"],
                          "task_key": "t", "model": "mlp", "method": ["solo", "a", "b", "dense", "c"],
                          "mean": [0.9, 0.5, 0.6, 0.7, 0.4]})
    board = ranking.leaderboard_table(ranking.scores_frame_from(frame), min_shared=1)
    assert board["tier"].tolist() == ["<1.05", "1.05–1.3", "1.05–1.3", "1.3–1.7", ">1.7"]
    solo = board.set_index("method").loc["solo"]
    assert not solo["ranked"] and math.isnan(solo["mean_rank"]) and "alone" in solo["note"]
    assert board.set_index("method").loc["b", "mean_rank"] == 1


def test_cells_on_an_underfit_reference_are_left_out_of_the_ranking(results):
    done = results.done()
    cell = done[["task_label", "model"]].drop_duplicates().iloc[0]
    keys = set(done.loc[(done["task_label"] == cell["task_label"]) & (done["model"] == cell["model"])
                        & (done["seed"] == 0), "dense_key"])
    runs = ranking.usable_runs(done, underfit=keys)
    assert not ((runs["task_label"] == cell["task_label"]) & (runs["model"] == cell["model"])).any()
    assert len(ranking.usable_runs(done)) > len(runs) > 0
    left = ranking.underfit_cells(done, keys)
    assert left[["task_label", "model"]].values.tolist() == [[cell["task_label"], cell["model"]]]
    assert left["seeds"].iloc[0] == [0]


def test_twin_test_pairs_seeds_and_states_p(results):
    scores = ranking.scores_frame(ranking.cell_scores(ranking.usable_runs(results.done())))
    tests = [t for t in significance.twin_tests(scores, PACKAGED_TWINS) if t.metric == "equalized odds"]
    pairs = {(t.fair, t.twin) for t in tests}
    assert pairs == {("fairlrf", "slr_w"), ("fairlrf", "truncated_svd")}
    svd = next(t for t in tests if t.twin == "truncated_svd")
    assert svd.pairs == 6 and svd.mean_difference > 0  # 2 cells x 3 seeds
    assert svd.p_value == pytest.approx(2 / 2**6)  # exact two-sided: all six differences positive


def test_a_twin_pair_in_different_tiers_is_shown_across_tiers_with_a_note():
    rows = [{"metric": "m", "tier": tier, "task_key": f"t{c}", "model": "mlp", "method": method, "mean": hv,
             "per_seed": {s: hv + 0.01 * s for s in range(3)}}
            for c in range(2) for method, tier, hv in (("fairquantize", "1.05–1.3", 0.6), ("int8_ptq", ">1.7", 0.5))]
    tests = significance.twin_tests(ranking.scores_frame_from(pd.DataFrame(rows)), PACKAGED_TWINS)
    (test,) = [t for t in tests if t.fair == "fairquantize"]
    assert test.tier == "1.05–1.3 vs >1.7" and test.pairs == 6 and test.mean_difference == pytest.approx(0.1)
    assert "across tiers" in test.note and "not like for like" in test.note


def test_store_round_trip_gives_the_same_tables(results, tmp_path):
    from synthetic_results import write_store
    from fairsqueeze.reports.data import load
    from fairsqueeze.store.database import Store

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
    from fairsqueeze.cli.main import main
    from fairsqueeze.reports.terminal import WIDTH
    from fairsqueeze.engine.runner import Runner, resolve_device
    from fairsqueeze.store.database import Store

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
    runs_page = "".join(p.read_text() for p in (isolated / "rep" / "runs").glob("*.html"))
    assert page.count('class="ablation') == 1 and "Bias card" in page and "confusion matrix, group 0" in runs_page
    board = (isolated / "lb" / "index.html").read_text()
    assert "truncated_svd" in board and "dense" in board
    assert (isolated / "rep" / "tables" / "runs.csv").exists()
    assert main(["report", "nosuch", "--db", db]) == 2


def _registry_catalogue() -> pd.DataFrame:
    """What the store records with each run: the method's family and registry position, for
    the built-in methods (other tests register planted plugins in the same process)."""
    from fairsqueeze.core.registry import METHODS

    names = [m for m in METHODS.names() if METHODS.get(m).__module__.startswith("fairsqueeze.methods.")]
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
    assert abs(hue["fairquantize"] - hue["fairquantize_error"]) < 15
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


def test_run_details_are_nested_tables_with_readable_numbers(results, tmp_path):
    from fairsqueeze.reports.html import build_report
    from fairsqueeze.reports.runs import human_bytes

    assert human_bytes(1536) == "1.5 KiB" and human_bytes(1287360) == "1.23 MiB" and human_bytes(512) == "512 B"
    runs = results.runs.copy()
    runs["info"] = [{"passes": {"forward": 3.0, "backward": 2.0}, "layers": [{"name": "fc2", "rank": 4}], "lr": 0.0123456}
                    ] * len(runs)
    build_report(dataclasses.replace(results, runs=runs), "s", tmp_path)
    page = "".join(p.read_text() for p in sorted((tmp_path / "runs").glob("*.html")))
    run = page[page.index('id="run-'):]
    run = run[:run.index('<div class="run"', 10)]
    assert "{'" not in run and "{&#39;" not in run  # no raw Python dicts
    info = run[run.index("<h5>info</h5>"):]
    assert '<th class="lbl">passes</th><td class="lbl wrap"><table class="kv nested">' in info
    assert '<th class="lbl">forward</th><td class="lbl wrap">3</td>' in info
    assert '<th class="lbl">lr</th><td class="lbl wrap">0.01235</td>' in info
    fp = results.footprint.iloc[0]
    assert f'<th class="lbl">serialized_bytes</th><td class="lbl wrap">{human_bytes(fp["serialized_bytes"])}</td>' in run
    assert "e+0" not in run


def test_a_hostile_suite_name_stays_in_one_folder_and_every_export_is_escaped(results, tmp_path, monkeypatch):
    from synthetic_results import write_store
    from fairsqueeze.cli.main import main
    from fairsqueeze.reports.export import report_folder, slug
    from fairsqueeze.store.database import Store

    for bad in ("../../etc", "..", "a/b", "<script>alert(1)</script>", ".hidden", ""):
        folder = report_folder(bad)
        assert folder.parent == Path("results/reports") and ".." not in folder.parts and folder.name
        assert "/" not in slug(bad) and not slug(bad).startswith(".")
    name = "../<script>alert(1)</script>"
    runs = results.runs.copy()
    runs["label"] = runs["label"].where(runs["method"] != "slr_w", "=HYPERLINK(\"x\")<script>|\\input{x}")
    store = Store(f"sqlite:///{tmp_path}/s.db")
    write_store(dataclasses.replace(results, runs=runs), store, suite=name)
    monkeypatch.chdir(tmp_path)
    assert main(["report", name, "--db", f"sqlite:///{tmp_path}/s.db"]) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "s.db"]
    assert written and all(p.resolve().is_relative_to(tmp_path / "results" / "reports") for p in written)
    page = next(p for p in written if p.name == "index.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    md = "".join(p.read_text() for p in written if p.suffix == ".md")
    assert "<script>" not in md and "&lt;script&gt;" in md and "\\|" in md
    tex = "".join(p.read_text() for p in written if p.suffix == ".tex")
    assert "=HYPERLINK" in tex and "\\input{x}" not in tex and "\\textbackslash input\\{x\\}" in tex
    csv = pd.concat([pd.read_csv(p) for p in written if p.suffix == ".csv" and "label" in pd.read_csv(p, nrows=0)])
    labels = set(csv["label"].dropna())
    assert "'=HYPERLINK(\"x\")<script>|\\input{x}" in labels and not any(v.startswith(("=", "+", "@")) for v in labels)


def test_leaderboard_tiers_in_numeric_order_and_singletons_unranked(results, tmp_path):
    """(A twin pair met only across tiers is compared with a note: the significance test above.)"""
    from fairsqueeze.leaderboard.site import build_leaderboard, in_tier_order

    def score(method, tier, cell, mean=0.5):
        return {"metric": "equalized odds", "tier": tier, "method": method, "cell": cell, "mean": mean}

    scores = pd.DataFrame([score("fairprune", "1.3–1.7", "a"), score("magnitude_prune", ">1.7", "a"),
                           score("fairlrf", "<1.05", "a"), score("slr_w", "1.05–1.3", "a"),
                           score("fairquantize", ">1.7", "b"), score("int8_ptq", ">1.7", "b")])
    ordered = in_tier_order(scores, ["method"])
    assert list(ordered["tier"]) == ["<1.05", "1.05–1.3", "1.3–1.7", ">1.7", ">1.7", ">1.7"]

    page = build_leaderboard(results, tmp_path).read_text()
    board = page[page.index('id="board-table"'):page.index("</table>", page.index('id="board-table"'))]
    tiers = [html.unescape(t) for t in re.findall(r'data-metric="equalized odds" data-tier="([^"]+)"', board)]
    assert tiers == sorted(tiers, key=["<1.05", "1.05–1.3", "1.3–1.7", ">1.7"].index)
    # the dense model and svd(k=4) are alone in their tiers: listed, not ranked
    assert board.count(">alone</a>") == 4 and ">1.00</a></td><td data-v=\"\"" not in board


def test_figures_are_cached_by_what_they_draw(results, tmp_path, monkeypatch):
    from fairsqueeze.reports import figures, verdicts
    from fairsqueeze.reports.html import FIGURES, build_report

    first = build_report(results, "s", tmp_path).read_text()
    cached = sorted(p.name for p in (tmp_path / FIGURES).glob("*.png"))
    # pareto, delta, cost per table, the four ablations, and one forest plot per verdict row with cells
    forests = sum(1 for c in verdicts.evaluation(results).cells.values() if len(c))
    assert forests >= 1 and len(cached) == 2 * 3 + 4 + forests

    def no_drawing(*args, **kwargs):
        raise AssertionError("redrawn")

    for name in ("pareto_figure", "delta_figure", "cost_figure", "ablation_figure", "forest_figure"):
        monkeypatch.setattr(figures, name, no_drawing)
    assert build_report(results, "s", tmp_path).read_text() == first  # same data: nothing drawn
    changed = results.metrics.copy()
    changed["accuracy"] = changed["accuracy"] * 0.99  # every figure plots accuracy
    with pytest.raises(AssertionError, match="redrawn"):
        build_report(dataclasses.replace(results, metrics=changed), "s", tmp_path)


def test_figures_read_well_from_their_artists(results):
    """The figures' own data, not pixels: axes inside the metric's range, one front line
    per method with two or more unflagged rows, colours a reader tells apart, labels and
    text large enough at 2x."""
    import itertools

    from coloraide import Color
    from matplotlib.colors import to_hex
    from matplotlib.text import Annotation

    from fairsqueeze.reports import figures

    colours = results.colours()
    for comp in comparisons(results.done()):
        fig = figures.pareto_figure(comp, colours)
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert 0 <= low < high <= 1  # accuracy
        low, high = ax.get_xlim()
        assert 0 <= low < high <= 1  # the headline gap
        fronts = [ln.get_gid() for ln in ax.get_lines() if (ln.get_gid() or "").startswith("front:")]
        many = {m for m in {r.method for r in comp.rows}
                if sum(r.ranked and r.method == m for r in comp.rows) > 1}
        assert sorted(fronts) == sorted(f"front:{m}" for m in many) and many  # one per method, none twice
        drawn = {c.get_gid().split(":", 1)[1]: to_hex(c.get_edgecolor()[0]) for c in ax.collections
                 if (c.get_gid() or "").startswith("points:") and c.get_facecolor()[:, 3].any()}
        assert set(drawn) >= many
        for a, b in itertools.combinations(drawn, 2):
            assert Color(drawn[a]).delta_e(Color(drawn[b]), method="2000") > 10, (a, b)
        labels = {t.get_text() for t in ax.texts if isinstance(t, Annotation)}
        assert {"k=4", "k=16", "sparsity_rate=0.2", "sparsity_rate=0.6"} <= labels  # sweep entries labelled
        legend = {t.get_text() for t in ax.get_legend().get_texts()}
        assert {r.method for r in comp.rows} <= legend
        px = figures.SCREEN_DPI / 72  # CSS px per point at the size the page shows the figure
        for text in [*ax.texts, *ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.title,
                     *ax.get_legend().get_texts()]:
            assert text.get_fontsize() * px >= 10, text
        figures.pyplot().close(fig)

        fig = figures.ablation_figure(comp, "k" if comp.num_classes == 2 else "sparsity_rate", colours)
        for axis in fig.axes:
            low, high = axis.get_ylim()
            assert 0 <= low < high <= 1  # no negative accuracy, no gap below 0
        figures.pyplot().close(fig)

        fig = figures.delta_figure(comp, colours)
        dense = [c for c in fig.axes[0].collections if c.get_gid() == "points:dense"]
        assert dense and np.allclose(dense[0].get_offsets(), 0)  # the dense model is the origin
        figures.pyplot().close(fig)


def test_near_chance_by_hand():
    """adult's women are 89 % one class: a model at 91 % there keeps half of the dense
    model's gain and is not near chance; one at 89.5 % is; a group the dense model cannot
    beat is no evidence."""
    from fairsqueeze.reports.chance import majority_rates, near_chance

    rates = {"t": majority_rates([0] * 89 + [1] * 11 + [0] * 50 + [1] * 50, [0] * 100 + [1] * 100)}
    assert rates["t"] == {"overall": 0.695, 0: 0.89, 1: 0.5}
    frame = pd.DataFrame({
        "task_key": "t", "dense_key": "d", "method": ["dense", "a", "b", "c"],
        "accuracy": [0.85, 0.84, 0.84, 0.71], "accuracy[g=0]": [0.93, 0.91, 0.895, 0.93], "accuracy[g=1]": [0.77, 0.77, 0.77, 0.5],
    })
    assert list(near_chance(frame, rates)) == [False, False, True, True]
    # a dense model no better than the rate on group 0: that group flags nobody
    frame.loc[0, "accuracy[g=0]"] = 0.90
    assert list(near_chance(frame, rates)) == [False, False, False, True]


def test_run_pages_are_rewritten_only_when_their_runs_change(results, tmp_path, monkeypatch):
    from fairsqueeze.reports import run_pages

    links = run_pages.write_run_pages(results, tmp_path, "t")
    pages = {p.name: p.read_text() for p in (tmp_path / "runs").glob("*.html")}
    assert len(pages) == 2 and all(f'id="run-{k}"' in "".join(pages.values()) for k in links.href)

    def no_writing(*args, **kwargs):
        raise AssertionError("rewritten")

    monkeypatch.setattr(run_pages, "run_section", no_writing)
    assert run_pages.write_run_pages(results, tmp_path, "t").href == links.href  # nothing changed: nothing written
    runs = results.runs.copy()
    runs.loc[0, "label"] = "renamed"
    with pytest.raises(AssertionError, match="rewritten"):
        run_pages.write_run_pages(dataclasses.replace(results, runs=runs), tmp_path, "t")


def test_exports_are_rewritten_only_when_what_they_show_changes(results, tmp_path, monkeypatch):
    from fairsqueeze.reports import export
    from fairsqueeze.reports.html import build_report

    build_report(results, "s", tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "tables").rglob("*") if p.is_file()}
    monkeypatch.setattr(export, "write_frame", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rewritten")))
    build_report(results, "s", tmp_path)  # nothing changed: nothing written
    assert {p.name: p.read_bytes() for p in (tmp_path / "tables").rglob("*") if p.is_file()} == before
    runs = results.runs.copy()
    runs.loc[0, "error"] = "new"
    with pytest.raises(AssertionError, match="rewritten"):  # the run records changed
        build_report(dataclasses.replace(results, runs=runs), "s", tmp_path)


def test_point_labels_never_overlap_in_a_dense_cluster():
    """Twelve configurations of one method within a hair of each other and one far away:
    every drawn label stands clear of the others and of every marker, the far point is
    named, and the figure says how many labels it left out."""
    from matplotlib.text import Annotation

    from fairsqueeze.reports import figures
    from fairsqueeze.reports.stats import Estimate
    from fairsqueeze.reports.tables import Comparison, Row

    def row(label, method, sweep, acc, gap):
        values = {"accuracy": Estimate(acc, 0.0, 3), "eodds_diff": Estimate(gap, 0.0, 3)}
        return Row(label, method, "f", 1, method, sweep, [(0, label)], {}, values)

    rng = np.random.default_rng(0)
    rows = [row("dense", "dense", {}, 0.9, 0.30)]
    rows += [row(f"p{i}", "prune", {"ratio": 0.01 * i}, 0.80 + 0.002 * rng.random(), 0.20 + 0.002 * rng.random())
             for i in range(12)]
    rows.append(row("far", "prune", {"ratio": 0.9}, 0.60, 0.05))
    comp = Comparison("t", "task", "m", 2, [], rows)
    fig = figures.pareto_figure(comp, {"dense": "#000000", "prune": "#1f77b4"})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert "ratio=0.9" in {t.get_text() for t in labels}
    for i, a in enumerate(boxes):
        assert all(not a.overlaps(b) for b in boxes[i + 1:]), labels[i].get_text()
    markers = np.concatenate([c.get_offsets() for c in ax.collections if (c.get_gid() or "").startswith("points:")])
    pixels = ax.transData.transform(markers)
    for t, box in zip(labels, boxes):  # a label covers no marker but may touch its own
        own = ax.transData.transform(t.xy)
        inside = ((pixels[:, 0] > box.x0) & (pixels[:, 0] < box.x1) & (pixels[:, 1] > box.y0) & (pixels[:, 1] < box.y1))
        assert not (inside & (np.hypot(*(pixels - own).T) > 1e-6)).any(), t.get_text()
    left_out = 13 - len(labels)  # twelve in the cluster and the far one
    assert left_out > 0 and any(f"{left_out} point label(s) left out" in t.get_text() for t in fig.texts)
    figures.pyplot().close(fig)


def test_a_long_legend_of_methods_never_runs_into_the_left_out_note():
    """A suite of 25 methods, each with a few labelled points in one cluster: the figure grows
    so that the legend's last row stays above the "labels left out" note and inside the
    figure; a figure of two methods keeps its size."""
    from fairsqueeze.reports import figures
    from fairsqueeze.reports.stats import Estimate
    from fairsqueeze.reports.tables import Comparison, Row

    def row(label, method, sweep, acc, gap):
        values = {"accuracy": Estimate(acc, 0.0, 3), "eodds_diff": Estimate(gap, 0.0, 3)}
        return Row(label, method, "f", 1, method, sweep, [(0, label)], {}, values)

    def drawn(methods):
        rng = np.random.default_rng(1)
        rows = [row("dense", "dense", {}, 0.9, 0.30)]
        rows += [row(f"{m}{i}", m, {"ratio": 0.1 * i}, 0.80 + 0.002 * rng.random(), 0.20 + 0.002 * rng.random())
                 for m in methods for i in range(3)]
        colours = {"dense": "#000000", **{m: f"C{i % 10}" for i, m in enumerate(methods)}}
        fig = figures.pareto_figure(Comparison("t", "task", "m", 2, [], rows), colours)
        fig.canvas.draw()
        return fig

    small = drawn(["prune"])
    assert tuple(small.get_size_inches()) == (7.4, 4.4)
    figures.pyplot().close(small)
    # a post-processed twin's long name takes two lines rather than run off the figure's edge
    fig = drawn([f"method_name_{i:02d}" for i in range(23)] + ["truncated_svd+equal_tpr_thresholds"])
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    note = next(t for t in fig.texts if "left out" in t.get_text()).get_window_extent(renderer)
    assert len(fig.axes[0].get_legend().get_texts()) == 25
    assert "truncated_svd\n+equal_tpr_thresholds" in {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert fig.get_size_inches()[1] > 4.4 and legend.y0 > note.y1 and legend.y0 > 0
    assert legend.x1 <= fig.bbox.x1
    figures.pyplot().close(fig)
    # a long task and model label: the title keeps inside the figure too
    long = Comparison("t", "compas: two_year_recid / sex (split_seed=per_seed)", "mlp(hidden=[128, 64])", 2, [],
                      [row("dense", "dense", {}, 0.9, 0.30), row("p", "prune", {"ratio": 0.5}, 0.8, 0.2)])
    fig = figures.pareto_figure(long, {"dense": "#000000", "prune": "C0"})
    fig.canvas.draw()
    title = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1
    figures.pyplot().close(fig)


def test_a_compressed_twin_equal_to_the_dense_model_is_never_the_best_trade_off():
    from fairsqueeze.reports import overview

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(seeds=(0, 1), failed=False)
    done = made.done()
    copy = done[done["method"] == "dense"].assign(method="copy", label="copy", entry=99, entry_label="copy",
                                                  compression_ratio=4.0, run_key=lambda f: f["run_key"] + "c")
    comp = comparisons(pd.concat([done, copy], ignore_index=True))[0]
    twin = next(r for r in comp.rows if r.method == "copy")
    assert overview.equals_dense(twin) and overview.best_of([twin], comp) is None
    # the same row one seed away from the dense model is a result, and may be the best
    moved = comparisons(pd.concat([done, copy.assign(accuracy=lambda f: f["accuracy"] + 0.01)], ignore_index=True))[0]
    assert overview.best_of([next(r for r in moved.rows if r.method == "copy")], moved).method == "copy"


def test_a_method_is_ranked_only_on_five_cells_shared_with_a_rival():
    # "a" and "b" share 6 cells; "c" meets them in one cell only, where it is best
    rows = [{"metric": "m", "tier": ">1.7", "task_key": f"t{i}", "model": "mlp", "method": m, "mean": v}
            for i in range(6) for m, v in (("a", 0.6), ("b", 0.5))]
    rows.append({"metric": "m", "tier": ">1.7", "task_key": "t0", "model": "mlp", "method": "c", "mean": 0.9})
    board = ranking.leaderboard_table(ranking.scores_frame_from(pd.DataFrame(rows))).set_index("method")
    assert board.loc["c", "shared_cells"] == 1 and not board.loc["c", "ranked"] and math.isnan(board.loc["c", "mean_rank"])
    assert "1 cell(s) shared with a rival: ranked from 5" in board.loc["c", "note"]
    # a: rank 2 in t0 (behind c), rank 1 in the other five -> 7/6; its six cells are counted
    assert board.loc["a", "ranked"] and board.loc["a", "mean_rank"] == pytest.approx(7 / 6)
    assert board.loc["a", "shared_cells"] == 6 == board.loc["a", "cells"]
    # five shared cells are enough, four are not
    four = [r for r in rows if r["task_key"] not in ("t4", "t5")]
    assert not ranking.leaderboard_table(ranking.scores_frame_from(pd.DataFrame(four))).set_index("method").loc["a", "ranked"]


def test_the_twin_tests_are_holm_corrected_over_the_page():
    from statsmodels.stats.multitest import multipletests

    from fairsqueeze.leaderboard import significance

    rng = np.random.default_rng(0)
    rows = []
    for fair, twins in PACKAGED_TWINS.items():
        for twin in twins:
            for c in range(4):
                for m, shift in ((fair, 0.02), (twin, 0.0)):
                    rows.append({"metric": "equalized odds", "tier": ">1.7", "cell": f"t{c}/mlp", "method": m,
                                 "per_seed": {s: 0.5 + shift + rng.normal(0, 0.01) for s in range(5)}})
    tests = significance.twin_tests(pd.DataFrame(rows), PACKAGED_TWINS)
    raw = [t.p_value for t in tests]
    assert len(tests) >= 5 and [t.p_holm for t in tests] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert all(t.p_holm >= t.p_value for t in tests)


def test_only_the_current_definition_of_a_suite_counts_and_each_configuration_once():
    from fairsqueeze.reports.data import current_definitions

    base = {"task_key": "t", "model": "mlp", "seed": 0, "method": "fairprune", "dense_key": "d"}
    frame = pd.DataFrame([
        {**base, "suite": "default", "run_key": "new", "params": {"ratio": 0.5, "steps": 1}},
        {**base, "suite": "default@v1", "run_key": "old", "params": {"ratio": 0.5}},  # before --redefine
        {**base, "suite": "other", "run_key": "new", "params": {"ratio": 0.5, "steps": 1}},  # shared run
        {**base, "suite": "other", "run_key": "again", "params": {"steps": 1, "ratio": 0.5}},  # same config twice
        {**base, "suite": "other", "run_key": "seed1", "seed": 1, "params": {"ratio": 0.5, "steps": 1}},
    ])
    kept = current_definitions(frame)
    assert kept["run_key"].tolist() == ["new", "seed1"]


def test_friedman_nemenyi_and_the_cd_diagram_on_six_cells():
    from fairsqueeze.leaderboard import significance

    # six cells, a always first, b second, c third but for one cell where b and c swap
    rows = [{"metric": "m", "tier": ">1.7", "task_key": f"t{i}", "model": "mlp", "method": m, "mean": v}
            for i in range(6) for m, v in (("a", 0.9), ("b", 0.5 if i else 0.3), ("c", 0.4))]
    result = significance.friedman(ranking.scores_frame_from(pd.DataFrame(rows)), "m", ">1.7")
    assert result.mean_ranks == pytest.approx({"a": 1.0, "b": 13 / 6, "c": 17 / 6})
    # CD by hand: q_0.05(3, ∞) / √2 · √(3·4 / 36) = 3.314 / 1.414 · 0.577 = 1.353
    assert result.critical_difference == pytest.approx(1.3529, abs=1e-3)
    p = result.nemenyi
    assert list(p.index) == ["a", "b", "c"] and (p.to_numpy() == p.to_numpy().T).all()
    assert p.loc["a", "c"] < 0.05 < p.loc["a", "b"]  # rank gaps 1.83 and 1.17 against a CD of 1.35
    png = significance.cd_diagram(result)
    assert png and png.width > 300


def test_the_dense_model_with_thresholds_is_a_hollow_black_star_on_the_pareto_figure():
    """The post-processing bar (the dense model plus per-group thresholds) is drawn as the
    dense model's reference, hollow, never as a method with a front; without it, no such point."""
    import warnings

    from matplotlib.colors import to_hex

    from synthetic_results import ENTRIES, make_results
    from fairsqueeze.reports import figures

    entries = ENTRIES + [("dense+equal_tpr_thresholds", "dense+thresholds", {}, {}, (0.15, 0.15), 1.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(entries=entries, failed=False)
    colours = made.colours()
    assert colours["dense+equal_tpr_thresholds"] == colours["dense"]
    comp = comparisons(made.done())[0]
    fig = figures.pareto_figure(comp, colours)
    ax = fig.axes[0]
    (bar,) = [c for c in ax.collections if c.get_gid() == "points:dense+equal_tpr_thresholds"]
    (dense,) = [c for c in ax.collections if c.get_gid() == "points:dense"]
    assert bar.get_sizes()[0] == dense.get_sizes()[0] == 180  # both stars' size
    assert not bar.get_facecolor()[:, 3].any() and dense.get_facecolor()[:, 3].min() > 0  # hollow and filled
    assert to_hex(bar.get_edgecolor()[0]) == to_hex(dense.get_edgecolor()[0])
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "front:dense+equal_tpr_thresholds"]
    assert "dense+equal_tpr_thresholds" in [t.get_text() for t in ax.get_legend().get_texts()]
    figures.pyplot().close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = comparisons(make_results(failed=False).done())[0]
    fig = figures.pareto_figure(plain, colours)
    assert not [c for c in fig.axes[0].collections if c.get_gid() == "points:dense+equal_tpr_thresholds"]
    figures.pyplot().close(fig)
