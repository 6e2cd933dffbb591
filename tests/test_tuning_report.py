"""The tuning section of the report and the read-only listing of studies, on a small tuned
digits suite: fronts against Optuna's own ``best_trials``, CIs against SciPy, policies named."""
import math
import re

import numpy as np
import optuna
import pytest
from scipy import stats
from sqlalchemy import create_engine, func, inspect, select, table

from tuned import POLICIES
from fairsqueeze.cli.main import main
from fairsqueeze.reports import figures
from fairsqueeze.reports.data import load
from fairsqueeze.reports.palette import palette
from fairsqueeze.reports.tuning import _unequal
from fairsqueeze.store.database import Store
from fairsqueeze.spec.tuning import Policy

POLICY_LABELS = sorted(Policy.parse(p).label for p in POLICIES)


@pytest.fixture(scope="module")
def report_folder(tuned_db, tmp_path_factory):
    db, name = tuned_db
    out = tmp_path_factory.mktemp("tuned-report")
    assert main(["report", name, "--db", db, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(report_folder):
    return (report_folder / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def results(tuned_db):
    db, name = tuned_db
    return load(Store(db, read_only=True), name)


def snapshot(url: str) -> dict[str, int]:
    """Every table of a database with its row count."""
    engine = create_engine(url)
    with engine.connect() as conn:
        return {t: conn.execute(select(func.count()).select_from(table(t))).scalar()
                for t in inspect(engine).get_table_names()}


def test_the_tuning_section_lists_budgets_sampler_objectives_and_constraint(report):
    section = report[report.index('<section id="tuning">'):report.index('<section id="runs">')]
    rows = re.findall(r"<tbody><tr>.*?</tbody>", section.split('class="budgets"')[1], flags=re.S)[0]
    assert rows.count("<tr>") == 2  # one row per tuned entry
    assert re.search(r"svd</td><td class=\"lbl\">truncated_svd</td><td data-v=\"5\">5</td><td>0, 1</td><td>10/10</td>", rows)
    assert re.search(r"slr_w\(k=8,layer=fc2\)</td><td class=\"lbl\">slr_w</td><td data-v=\"3\">3</td><td>0, 1</td><td>6/6</td>", rows)
    assert rows.count("random (seed 7)") == 2 and rows.count("max f1_avg, min eodd") == 2
    assert rows.count("val accuracy ≥ 99 % of the dense model&#39;s") == 2
    assert rows.count(", ".join(Policy.parse(p).label for p in POLICIES)) == 2
    # the suite allowed unequal budgets: the report says so, naming both
    note = re.search(r'<p class="note unequal">(.*?)</p>', section, flags=re.S).group(1)
    assert "svd 5" in note and "slr_w(k=8,layer=fc2) 3" in note
    assert 'href="#tuning"' in report and section.count('class="tuning-fronts wide"') == 1


def test_the_unequal_budget_note_needs_unequal_budgets():
    assert _unequal([{"label": "a", "budget": 4}, {"label": "b", "budget": 4}]) is None
    assert "a 4, b 9" in _unequal([{"label": "a", "budget": 4}, {"label": "b", "budget": 9}])


def test_the_drawn_fronts_are_optunas_best_trials_and_dominate(tuned_db, results, report):
    db, _ = tuned_db
    fig = figures.tuning_figure(results.studies, results.colours())
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    assert len(lines) == len(results.studies) == 4
    for summary in optuna.get_all_study_summaries(storage=db):  # the oracle: Optuna's own API
        study = optuna.load_study(study_name=summary.study_name, storage=db)
        best = sorted((t.values[0], t.values[1]) for t in study.best_trials)
        line = lines[f"front:{summary.study_name}"]
        np.testing.assert_allclose(np.c_[line.get_xdata(), line.get_ydata()], np.array(best))
        # by hand: no drawn point is dominated by a feasible complete trial
        feasible = [t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                    if all(c <= 0 for c in t.constraints.values())]
        for u, f in best:
            assert not any(v[0] >= u and v[1] <= f and (v[0] > u or v[1] < f) for v in feasible)
        # the report's front table lists the same trials
        block = report.split(f'data-study="{summary.study_name}"')[1].split("</div>")[0]
        listed = sorted(int(n) for n in re.findall(r'<tr data-trial="(\d+)">', block))
        assert listed == sorted(t.number for t in study.best_trials)
    # infeasible trials are drawn (as x) yet never on a front
    assert any((~s.trials["feasible"]).any() for s in results.studies)


def test_every_policy_is_named_next_to_its_selected_trial(results):
    fig = figures.tuning_figure(results.studies, results.colours())
    for study in results.studies:
        assert sorted(study.selected) == POLICY_LABELS
        ax = next(a for a in fig.axes if a.get_title().startswith(study.attrs["label"] + " ·"))
        at = study.trials.set_index("number")
        for policy, number in study.selected.items():
            xy = (at.loc[number, "utility"], at.loc[number, "unfairness"])
            named = [a.get_text() for a in ax.texts if np.allclose(a.xy, xy)]
            assert any(text.startswith(f"s{study.attrs['seed']}: ") and policy in text.split(": ")[1].split(", ")
                       for text in named), (policy, named)


def test_the_selected_table_names_every_policy_with_its_trials_and_links(results, report, report_folder):
    section = report.split('<section id="tuning">')[1]
    rows = re.findall(r'<tr data-policy="([^"]+)">(.*?)</tr>', section, flags=re.S)
    assert len(rows) == 8 and sorted({p for p, _ in rows}) == POLICY_LABELS
    for study in results.studies:
        for policy, number in study.selected.items():
            label = f"{study.attrs['label']}[{policy}]"
            (cells,) = [c for p, c in rows if p == policy and f">{label}</a>" in c]
            assert f"s{study.attrs['seed']}: #{number}" in cells
    links = re.findall(r'href="(runs/[0-9a-f]+\.html)#run-([0-9a-f]+)"', section.split("</table>")[1])
    assert len(links) >= 8
    for page, key in links:  # every link reaches a run's detail
        assert f'id="run-{key}"' in (report_folder / page).read_text(encoding="utf-8")


def test_the_selected_results_are_seed_means_with_student_t_cis(tuned_db, results, report):
    db, _ = tuned_db
    test = Store(db, read_only=True).metrics_frame("test")
    assert len(results.selected) == 8 and (results.selected["seeds"] == 2).all()
    for _, row in results.selected.iterrows():
        keys = [k for _, k in row["runs"]]
        for name in ("f1_avg", "eodd"):
            v = test[(test["name"] == name) & test["run_key"].isin(keys)]["value"].to_numpy()
            # two seeds: a mean, no t-interval (t_{0.975,1} = 12.7); the page shows the values
            assert row[name] == pytest.approx(v.mean()) and math.isnan(row[f"{name}_ci"])
        cells = re.search(rf'<tr data-policy="{re.escape(row["policy"])}"><td class="lbl">[^\n]*?>{re.escape(row["label"])}</a>'
                          r'.*?</tr>', report, flags=re.S).group(0)
        assert f'>{row["eodd"]:.3f}</td>' in cells and "±" not in cells


def test_a_suite_without_tuning_has_no_tuning_section(tmp_path):
    from synthetic_results import make_results
    from fairsqueeze.reports.html import build_report

    page = build_report(make_results(), "synthetic", tmp_path).read_text(encoding="utf-8")
    assert 'id="tuning"' not in page and "Pareto fronts (validation)" not in page


def test_reading_writes_nothing(tuned_db, tmp_path, capsys):
    # a path with no database: one line, and no file appears
    fresh = tmp_path / "fresh.db"
    for argv in (["fronts"], ["show"], ["report", "x", "--out", str(tmp_path / "r")],
                 ["leaderboard", "--out", str(tmp_path / "lb")]):
        assert main([*argv, "--db", f"sqlite:///{fresh}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "there is no database at" in err
    assert not fresh.exists()
    # an empty database stays empty
    create_engine(f"sqlite:///{fresh}").connect().close()
    assert main(["fronts", "--db", f"sqlite:///{fresh}"]) == 2
    assert "holds no fairsqueeze results" in capsys.readouterr().err and snapshot(f"sqlite:///{fresh}") == {}
    # a results database that was never tuned: no studies, and no Optuna or selection tables made
    plain = f"sqlite:///{tmp_path}/plain.db"
    Store(plain)
    before = snapshot(plain)
    assert main(["fronts", "--db", plain]) == 0 and capsys.readouterr().out.strip() == "no tuning studies"
    assert snapshot(plain) == before
    # a tuned database: listing and reporting change no table
    db, name = tuned_db
    before = snapshot(db)
    assert main(["fronts", "--db", db, "--suite", name]) == 0 and "Pareto front:" in capsys.readouterr().out
    assert main(["report", name, "--db", db, "--out", str(tmp_path / "again")]) == 0
    assert main(["show", "--db", db, "--suite", name]) == 0
    assert main(["leaderboard", "--db", db, "--out", str(tmp_path / "board")]) == 0
    assert snapshot(db) == before and not math.isnan(before["trials"])


def test_the_figure_marks_flagged_and_infeasible_trials_and_draws_a_3_objective_front_as_points():
    import pandas as pd
    from fairsqueeze.reports.tuning_report import TunedStudy

    names = ["f1_avg", "eodd", "compression_ratio"]
    trials = pd.DataFrame({"number": [0, 1, 2], "utility": [0.8, 0.7, 0.9], "unfairness": [0.1, 0.0, 0.3],
                           "feasible": [True, True, False], "flagged": [False, True, False], "params": [{}] * 3,
                           "compression": [2.0, 3.0, 1.5]})
    front = pd.DataFrame({"trial": [0, 1], "f1_avg": [0.8, 0.7], "eodd": [0.1, 0.0], "compression_ratio": [2.0, 3.0],
                          "params": [{}, {}]})
    attrs = {"label": "svd", "method": "truncated_svd", "seed": 0, "trials": 4, "objectives": names}
    three = TunedStudy("a", attrs, ["maximize", "minimize", "maximize"], trials, front, {"utopia": 0})
    empty = TunedStudy("b", {**attrs, "label": "other"}, three.directions, trials.iloc[:0], front.iloc[:0], {})
    fig = figures.tuning_figure([three, empty], palette(pd.DataFrame({"method": ["truncated_svd"]})))
    panel = next(a for a in fig.axes if a.get_title().startswith("svd ·"))
    (line,) = [ln for ln in panel.get_lines() if ln.get_gid() == "front:a"]
    assert line.get_linestyle() == "None" and list(line.get_xdata()) == [0.7, 0.8]  # points, no staircase
    hollow = [c for c in panel.collections if len(c.get_offsets()) and not c.get_facecolors().size]
    assert [tuple(c.get_offsets()[0]) for c in hollow if c.get_sizes()[0] < 100] == [(0.7, 0.0)]  # the flagged trial
    from matplotlib.markers import MarkerStyle

    def shape(path):
        return path.vertices / np.abs(path.vertices).max()

    at = [c for c in panel.collections if len(c.get_offsets()) and tuple(c.get_offsets()[0]) == (0.9, 0.3)]
    assert len(at) == 1 and np.array_equal(shape(at[0].get_paths()[0]), shape(MarkerStyle("x").get_path()))  # as x
    assert [t.get_text() for t in panel.texts] == ["utopia"]  # one seed: no seed prefix


def test_a_flagged_trial_on_the_front_is_named_as_such():
    from fairsqueeze.reports.tuning_report import front_table

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["f1_avg", "eodd"])
    for values, flags in (([0.8, 0.2], []), ([0.3, 0.0], ["degenerate"]), ([0.7, 0.3], [])):
        trial = study.ask()
        trial.set_user_attr("result", {"params": {"k": 1}, "flags": flags})
        study.tell(trial, values)
    front = front_table(study)
    assert list(front["trial"]) == [0, 1]  # the constant model is on Optuna's front (eodd 0) ...
    assert list(front["flags"]) == ["", "degenerate"]  # ... and says what it is


def test_front_params_are_the_searched_ones_on_one_short_line():
    from fairsqueeze.store.studies import short_params
    from fairsqueeze.reports.tuning_report import front_table

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_categorical("penalty", ["abs", "square"])
    trial.set_user_attr("result", {"params": {"lr": trial.params["lr"], "penalty": trial.params["penalty"], "epochs": 2}})
    study.tell(trial, [0.8, 0.1])
    (params,) = front_table(study)["params"]
    assert params == trial.params  # the fixed epochs are the entry's, not the trial's
    assert short_params({"lr": 0.0246406658, "penalty": "abs", "k": 3}) == "k=3, lr=0.02464, penalty=abs"
