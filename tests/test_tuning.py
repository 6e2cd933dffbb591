"""Tuning: selection policies against hand-picked answers, suite parsing, studies end to end."""
import json

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from fairsqueeze.cli.main import main
from fairsqueeze.core.errors import ConfigError
from fairsqueeze.store.database import Store
from fairsqueeze.spec.suite import parse_suite
from fairsqueeze.spec.tuning import Policy, best_utility, fairest_above, fairest_within, utopia
from fairsqueeze.store.studies import trial_params, trials_frame
from fairsqueeze.reports.tuning_report import selections_frame
from fairsqueeze.store.database import sqlite_single_writer
from fairsqueeze.engine.worker import MAX_TRIAL_ATTEMPTS


def frame(rows):
    return pd.DataFrame(rows, columns=["number", "utility", "unfairness", "feasible", "flagged"])


TRIALS = frame(
    [
        (0, 0.90, 0.20, True, False),
        (1, 0.88, 0.05, True, False),
        (2, 0.80, 0.01, True, False),
        (3, 0.95, 0.00, True, True),  # constant predictions: best on both axes, never selectable
        (4, 0.99, 0.30, False, False),  # violates the accuracy constraint
    ]
)


def test_policies_pick_the_hand_computed_trial():
    assert best_utility(TRIALS) == 0
    # best utility 0.90: within 5 % means >= 0.855 -> trials 0, 1 -> the fairer is 1
    assert fairest_within(TRIALS, 0.05) == 1
    # within 15 %: >= 0.765 admits trial 2 (unfairness 0.01)
    assert fairest_within(TRIALS, 0.15) == 2
    assert fairest_above(TRIALS, 0.85) == 1
    assert fairest_above(TRIALS, 0.95) is None
    # min-max scaled: trial 0 (1, 0), trial 1 (0.8, 0.15/0.19), trial 2 (0, 1) -> trial 1 is closest to (1, 1)
    assert utopia(TRIALS) == 1


def test_flagged_and_infeasible_trials_are_excluded_only_because_they_are_flagged():
    unflagged = TRIALS.assign(flagged=False)
    assert best_utility(unflagged) == 3
    assert fairest_within(unflagged, 0.05) == 3  # the collapsed model would win without the flag
    assert best_utility(TRIALS.assign(feasible=True)) == 4  # the infeasible one would win without the constraint


def test_ties_go_to_the_other_objective_then_the_earlier_trial():
    tied = frame([(0, 0.9, 0.2, True, False), (1, 0.9, 0.1, True, False), (2, 0.9, 0.1, True, False)])
    assert best_utility(tied) == 1
    assert fairest_within(tied, 0.0) == 1
    assert utopia(tied) == 1  # no spread in utility: both score 1 on it; 1 and 2 tie, 1 is earlier


def test_policy_parsing_names_the_problem():
    assert Policy.parse({"fairest_within": 0.1}).label == "fairest_within(0.1)"
    assert Policy.parse("utopia").label == "utopia"
    with pytest.raises(ConfigError, match="unknown selection policy"):
        Policy.parse("fairest")
    with pytest.raises(ConfigError, match=r"\{fairest_within: <tolerance>\}"):
        Policy.parse("fairest_within")
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        Policy.parse({"fairest_within": 1.5})


def suite_dict(methods, tuning=None, seeds=(0,), name="tune-tiny"):
    return {
        "name": name,
        "seeds": list(seeds),
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "tasks": [{"name": "digits", "options": {"target": "parity"}}],
        "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
        "tuning": tuning or {"trials": 4, "sampler": {"name": "tpe", "seed": 3}},
        "methods": methods,
    }


def test_suite_tuning_errors_point_at_the_entry():
    with pytest.raises(ConfigError, match=r"methods\[1\].tune: .*unknown metric 'nosuch'"):
        parse_suite(suite_dict(["dense", {"name": "truncated_svd", "tune": True}],
                               {"trials": 3, "objectives": {"utility": "nosuch"}}))
    with pytest.raises(ConfigError, match="'eodd' is not a metric where higher is better"):
        parse_suite(suite_dict([{"name": "truncated_svd", "tune": True}], {"trials": 3, "objectives": {"utility": "eodd"}}))
    with pytest.raises(ConfigError, match="either swept or tuned"):
        parse_suite(suite_dict([{"name": "truncated_svd", "tune": True, "sweep": {"k": [1, 2]}}]))
    with pytest.raises(ConfigError, match="unknown sampler 'cmaes'"):
        parse_suite(suite_dict([{"name": "truncated_svd", "tune": True}], {"trials": 3, "sampler": "cmaes"}))


def test_budgets_are_equal_unless_the_suite_says_otherwise():
    methods = [{"name": "truncated_svd", "tune": True}, {"name": "slr_w", "tune": {"trials": 9}}]
    with pytest.raises(ConfigError, match=r"different trial budgets \[4, 9\]"):
        parse_suite(suite_dict(methods))
    suite = parse_suite(suite_dict(methods, {"trials": 4, "unequal_budgets": True}))
    assert sorted(s.method.tune.trials for s in suite.studies()) == [4, 9]
    assert suite.runs() == []  # tuned entries are not fixed runs


TUNED = [
    "dense",
    {"name": "truncated_svd", "params": {"layer": "fc2", "k": 8}, "tune": True},
    {"name": "slr_w", "params": {"layer": "fc2", "k": 8}, "tune": True},
]
POLICIES = ["best_utility", {"fairest_within": 0.05}, "utopia"]


def write_suite(tmp_path, methods=TUNED, tuning=None, name="tune-tiny"):
    tuning = tuning or {"trials": 4, "sampler": {"name": "tpe", "seed": 3}, "policies": POLICIES,
                        "constraints": {"accuracy_within": 0.3}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite_dict(methods, tuning, name=name)))
    return path


def test_tuning_end_to_end_through_optuna_and_the_cli(isolated, capsys):
    db = f"sqlite:///{isolated}/t.db"
    path = write_suite(isolated)
    assert main(["run", str(path), "--db", db, "--quiet"]) == 0

    # the studies are Optuna's own, in the engine's database
    summaries = optuna.get_all_study_summaries(storage=db)
    assert len(summaries) == 2
    store = Store(db)
    chosen = selections_frame(store)
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=db)
        trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(study.trials) == len(trials) == 4  # exactly the budget
        assert study.user_attrs["sampler"] == {"name": "tpe", "seed": 3, "options": {"constant_liar": False}}  # the engine default, stored
        assert study.user_attrs["split"] == "val"
        assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
        assert all(1 <= t.params["k"] <= 8 for t in trials)  # the space stays under the entry's k
        assert all("accuracy_within" in t.constraints for t in trials)
        assert study.best_trials and all(t.constraints["accuracy_within"] <= 0 for t in study.best_trials)

        # best utility, recomputed from Optuna's trial values, is what the store says was selected
        ok = [t for t in trials if t.constraints["accuracy_within"] <= 0 and not t.user_attrs["result"]["flags"]]
        best = max(ok, key=lambda t: (t.values[0], -t.values[1], -t.number))
        row = chosen[(chosen["study"] == summary.study_name) & (chosen["policy"] == "best_utility")].iloc[0]
        assert int(row["trial"]) == best.number
        assert json.loads(row["params"]) == trial_params(best)
        assert set(chosen[chosen["study"] == summary.study_name]["policy"]) == {"best_utility", "fairest_within(0.05)", "utopia"}

        # the selected configuration was evaluated as an ordinary run, on val and test
        run = store.runs_frame().set_index("key").loc[row["run_key"]]
        assert run["status"] == "done"
        info = run["info"]["selected"]
        assert info["study"] == summary.study_name and "best_utility" in info["policies"] and info["trials"] == 4
        if study.user_attrs["method"] == "truncated_svd":  # deterministic: the run reproduces the trial on val
            val = store.metrics_frame("val").query("run_key == @row.run_key").set_index("name")["value"]
            assert val["f1_avg"] == pytest.approx(best.values[0]) and val["eodd"] == pytest.approx(best.values[1])
    assert set(store.metrics_frame()["split"]) == {"val", "test"}

    # a second run adds nothing: no extra trial, no new run
    n_runs = len(store.runs_frame())
    assert main(["run", str(path), "--db", db, "--quiet"]) == 0
    assert sum(len(optuna.load_study(study_name=s.study_name, storage=db).trials) for s in summaries) == 8
    assert len(store.runs_frame()) == n_runs

    capsys.readouterr()
    assert main(["fronts", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "Pareto front:" in out and "sampler tpe (seed 3), 4/4 trials complete" in out
    assert "selected by fairest_within(0.05): trial" in out
    assert "selected configurations on test (mean ± 95 % CI over seeds)" in out
    assert "truncated_svd(k=8,layer=fc2)[utopia]" in out


def test_a_sequential_study_is_reproducible_from_its_sampler_seed(isolated):
    methods = [{"name": "truncated_svd", "params": {"layer": "fc2", "k": 8}, "tune": True}]
    tuning = {"trials": 5, "sampler": {"name": "random", "seed": 11}}
    path = write_suite(isolated, methods, tuning)
    results = []
    for db in ("a", "b"):
        url = f"sqlite:///{isolated}/{db}.db"
        assert main(["run", str(path), "--db", url, "--quiet"]) == 0
        (summary,) = optuna.get_all_study_summaries(storage=url)
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        results.append([(t.params, t.values, t.user_attrs["result"]["seed"]) for t in study.trials])
    assert results[0] == results[1]
    assert len({json.dumps(p) for p, _, _ in results[0]}) > 1  # the sampler really explored


def test_tpe_without_constant_liar_samples_the_same_sequential_trials_with_fewer_reads():
    """The engine turns TPE's constant liar off (a study's trials never overlap): the trials are
    the same as with it on, and TPE reads the study's trials once per trial, not per parameter."""
    from fairsqueeze.spec.tuning import SamplerSpec

    def run(spec):
        storage = optuna.storages.InMemoryStorage()
        reads = []
        original = storage.get_all_trials
        storage.get_all_trials = lambda *a, **k: reads.append(1) or original(*a, **k)
        study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], sampler=spec.build())
        study.optimize(lambda t: [t.suggest_float("a", 0, 1) + t.suggest_int("b", 1, 9),
                                  t.suggest_float("c", 1e-3, 1, log=True) * t.params["a"]], n_trials=8)
        return [t.params for t in study.trials], len(reads)

    default = SamplerSpec("tpe", 3, (("n_startup_trials", 3),))
    assert default.effective_options() == {"constant_liar": False, "n_startup_trials": 3}
    liar = SamplerSpec("tpe", 3, (("n_startup_trials", 3), ("constant_liar", True)))  # a suite may ask for it
    (ours, our_reads), (theirs, their_reads) = run(default), run(liar)
    assert ours == theirs
    assert their_reads - our_reads == 5 * 3  # with the liar, each TPE trial (5) re-reads for each of its 3 parameters


def test_nothing_on_the_tuning_path_reads_the_test_split(isolated, register_plugin, capfd, caplog):
    """Trials run with the test split sealed: an ordinary tuning completes every trial without
    a single attempt to read it, while a method that reaches for it fails its trial."""
    from dataclasses import dataclass

    from fairsqueeze.core.registry import METHODS
    from fairsqueeze.methods import Method, Outcome
    from fairsqueeze.datasets.base import TestSplitSealed, build_task, test_split_violations

    seen = []

    class Peek(Method):
        """Tries to read the test split by rebuilding its task."""

        @dataclass
        class Params:
            n: int = 1

        def space(self, trial):
            return {"n": trial.suggest_int("n", 1, 3)}

        def apply(self, ctx):
            try:
                build_task("digits", target="parity").test.y
                seen.append("read")
            except TestSplitSealed:
                seen.append("sealed")
            return Outcome(model=ctx.model)

    register_plugin("peek", Peek)

    before = test_split_violations()
    db = f"sqlite:///{isolated}/g.db"
    path = write_suite(isolated, [{"name": "slr_w", "params": {"layer": "fc2", "k": 8}, "tune": True}],
                       {"trials": 3, "sampler": "random"})
    assert main(["run", str(path), "--db", db, "--quiet"]) == 0
    (summary,) = optuna.get_all_study_summaries(storage=db)
    study = optuna.load_study(study_name=summary.study_name, storage=db)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert test_split_violations() == before  # nothing on the tuning path tried
    runs = Store(db).runs_frame()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "done"  # the selected run read test, after tuning

    db = f"sqlite:///{isolated}/p.db"
    path = write_suite(isolated, [{"name": "peek", "tune": True}], {"trials": 2, "sampler": "random"}, name="peek")
    capfd.readouterr()
    caplog.clear()
    main(["run", str(path), "--db", db, "--quiet"])
    (summary,) = optuna.get_all_study_summaries(storage=db)
    study = optuna.load_study(study_name=summary.study_name, storage=db)
    # a failed trial does not use up the budget: each of the 2 slots is tried MAX_TRIAL_ATTEMPTS
    # times, then abandoned, and the study stops there
    attempts = 2 * MAX_TRIAL_ATTEMPTS
    assert seen == ["sealed"] * attempts
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * attempts
    # each failed trial is one logged line, no traceback anywhere; the traceback is kept on the trial
    failed = [r.getMessage() for r in caplog.records if "failed: FairsqueezeError" in r.getMessage()]
    assert len(failed) == attempts and "tried to read the test split" in failed[0]
    assert not [r for r in caplog.records if r.exc_info] and "Traceback" not in capfd.readouterr().err
    assert all("Traceback" in t.user_attrs["error"] and "test split" in t.user_attrs["error"] for t in study.trials)


class TwoKnobs:
    """A planted plugin with two params, of which its space searches one."""

    @staticmethod
    def make(seen: list, with_space: bool):
        from dataclasses import dataclass

        from fairsqueeze.methods import Method, Outcome

        class Knobs(Method):
            @dataclass
            class Params:
                searched: int = 1
                fixed: int = 1

            def apply(self, ctx):
                seen.append((self.params.searched, self.params.fixed))
                return Outcome(model=ctx.model)

        if with_space:
            Knobs.space = lambda self, trial: {"searched": trial.suggest_int("searched", 2, 4)}
        return Knobs


def test_a_tuned_method_without_a_search_space_is_refused_with_one_line(isolated, capsys):
    from fairsqueeze.core.registry import METHODS

    with METHODS.registered("knobs", TwoKnobs.make([], with_space=False)):
        path = write_suite(isolated, ["dense", {"name": "knobs", "tune": True}], {"trials": 2, "sampler": "random"})
        assert main(["run", str(path), "--db", f"sqlite:///{isolated}/n.db", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "methods[1].tune" in err and "'knobs' has no search space" in err
    assert not (isolated / "n.db").exists() or Store(f"sqlite:///{isolated}/n.db").runs_frame().empty


def test_a_space_that_searches_one_param_keeps_the_entry_s_others(isolated):
    """Every trial runs with the searched param from the space and the entry's ``fixed: 7``. The
    engine used to run what ``space`` returned as the whole params: this plugin's dict then
    resolves to ``fixed = 1``, the default, which is what the last assertion shows."""
    import optuna

    from fairsqueeze.core.registry import METHODS, create_method

    seen = []
    with METHODS.registered("knobs", TwoKnobs.make(seen, with_space=True)):
        path = write_suite(isolated, [{"name": "knobs", "params": {"fixed": 7}, "tune": True}],
                           {"trials": 3, "sampler": {"name": "random", "seed": 0}})
        assert main(["run", str(path), "--db", f"sqlite:///{isolated}/k.db", "--quiet"]) == 0
        old_engine = create_method("knobs", create_method("knobs", {"fixed": 7}).space(optuna.trial.FixedTrial({"searched": 3})))
    assert len(seen) == 3  # the trials (each leaves the dense model as it is: flagged, none selected)
    assert all(fixed == 7 for _, fixed in seen) and all(2 <= searched <= 4 for searched, _ in seen)
    assert old_engine.params.fixed == 1


def test_a_second_worker_on_sqlite_is_refused_with_a_pointer_to_postgresql(isolated, capsys):
    db = f"sqlite:///{isolated}/w.db"
    path = write_suite(isolated)
    with sqlite_single_writer(db):
        assert main(["worker", str(path), "--db", db, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "SQLite allows one writer at a time" in err and "postgresql://" in err


def test_trials_frame_reads_constraints_and_flags(isolated):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for utility, unfairness, slack, flags in [(0.9, 0.1, -0.1, []), (0.95, 0.0, 0.2, []), (0.5, 0.0, -1.0, ["degenerate"])]:
        trial = study.ask()
        trial.set_constraint("accuracy_within", slack)
        trial.set_user_attr("result", {"flags": flags})
        study.tell(trial, [utility, unfairness])
    table = trials_frame(study)
    assert table["feasible"].tolist() == [True, False, True]
    assert table["flagged"].tolist() == [False, False, True]
    assert best_utility(table) == 0


def registered_methods():
    from fairsqueeze.core.registry import METHODS
    from fairsqueeze.cli.plugins import load_plugins

    load_plugins()
    return METHODS.names()


@pytest.mark.parametrize("name", registered_methods())
def test_every_method_s_search_space_gives_valid_params_that_fit_the_model(name):
    """Each registered method's space(trial), asked by a real Optuna study, yields params that
    pass the method's own validation and fit the conformance test's tiny MLP."""
    from fairsqueeze.core.registry import METHODS
    from fairsqueeze.engine.trials import suggested_params
    from fairsqueeze.models.base import create_model

    cls = METHODS.get(name)
    if not cls.searches():  # nothing to search: a suite that tunes it is refused when loaded
        with pytest.raises(ConfigError, match=rf"methods\[0\].tune: method '{name}' has no search space"):
            parse_suite(suite_dict([{"name": name, "tune": True}]))
        return
    base = cls.from_config(cls.conformance_params)
    model = create_model("mlp", (64,), 2, hidden=[32, 16])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        params = suggested_params(name, base.param_dict(), trial)
        method = cls.from_config(params)
        method.check_model(model)
        seen.append(json.dumps(method.param_dict(), sort_keys=True))
        study.tell(trial, 0.0)
    if study.trials[0].params:  # a method with a search space really explores it
        assert len(set(seen)) > 1
    unchanged = {k: v for k, v in base.param_dict().items() if k not in study.trials[0].params}
    assert all(json.loads(s)[k] == v for s in seen for k, v in unchanged.items())  # the rest stays as given


def test_a_trial_is_scored_on_validation_and_flagged_like_a_run():
    """Objectives and the constraint come from validation; a constant model and one equal to the
    dense model carry the engine's flags, a model that changes some predictions does not."""
    import torch

    from fairsqueeze.measure.footprint import footprint
    from fairsqueeze.methods import Predictions
    from fairsqueeze.measure.metrics import compute_metrics
    from fairsqueeze.datasets.base import Preparer, Split
    from fairsqueeze.engine.execute import score_on_validation
    from fairsqueeze.spec.tuning import parse_tuning

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    val = Split(x, (x[:, 0] > 0).astype(np.int64), rng.integers(0, 2, 200), np.arange(200))
    view = type("View", (), {"val": val, "prepare": Preparer(lambda t, train: t.float()), "num_classes": 2})()
    dense = torch.nn.Linear(4, 2)
    with torch.no_grad():
        dense.weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
        dense.bias.zero_()
    dense_pred = dense(torch.from_numpy(x)).argmax(1).numpy()
    dense_val = Predictions(val.y, dense_pred, val.s)
    spec = parse_tuning({"trials": 1, "constraints": {"accuracy_within": 0.1}}, True)
    cpu = torch.device("cpu")

    same = score_on_validation(dense, (), view, footprint(dense), cpu, spec, dense_val)
    assert same.flags == ["no_effect"] and same.accuracy_slack == pytest.approx(0.9 * 1.0 - 1.0)
    expected = compute_metrics(val.y, dense_pred, val.s, num_classes=2)
    assert same.values == [expected["f1_avg"], expected["eodd"]] and same.compression_ratio == 1.0

    constant = torch.nn.Linear(4, 2)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0]))
    assert "degenerate" in score_on_validation(constant, (), view, footprint(dense), cpu, spec, dense_val).flags

    shifted = torch.nn.Linear(4, 2)
    with torch.no_grad():
        shifted.weight.copy_(dense.weight)
        shifted.bias.copy_(torch.tensor([0.0, 0.3]))  # a few rows near the boundary change class
    result = score_on_validation(shifted, (), view, footprint(dense), cpu, spec, dense_val)
    assert result.flags == [] and result.accuracy_slack > -0.1


def test_selected_results_are_per_task_even_when_entries_share_a_label(isolated):
    from fairsqueeze.reports.tuning_report import selected_results

    data = suite_dict([{"name": "truncated_svd", "params": {"layer": "fc2", "k": 4}, "tune": True}],
                      {"trials": 2, "sampler": "random"}, name="two-tasks")
    data["tasks"].append({"name": "digits", "options": {"target": "parity", "noise": 2.0}})
    path = isolated / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    db = f"sqlite:///{isolated}/two.db"
    assert main(["run", str(path), "--db", db, "--quiet"]) == 0
    table = selected_results(Store(db))
    assert len(table) == 2 and table["task"].nunique() == 2 and (table["seeds"] == 1).all()
    assert (table["trials"] == 2).all() and set(table["policy"]) == {"best_utility"}


def test_the_progress_bar_counts_runs_trials_and_selected_runs(isolated, monkeypatch):
    """The bar's total is the work the suite still had (fixed runs, missing trials, then the
    selected runs as the policies choose them), and the worker ends with it full."""
    import io

    from tqdm import tqdm

    from fairsqueeze.engine import worker as worker_module
    from fairsqueeze.engine.runner import Runner, plan_suite, resolve_device
    from fairsqueeze.spec.suite import load_suite
    from fairsqueeze.datasets.base import data_root

    bars = []

    def visible_bar(iterable=None, **kwargs):
        kwargs.pop("disable", None)
        bars.append(tqdm(iterable, file=io.StringIO(), disable=False, **kwargs))
        return bars[-1]

    monkeypatch.setattr(worker_module, "progress_bar", visible_bar)
    db = f"sqlite:///{isolated}/bar.db"
    plan = plan_suite(load_suite(str(write_suite(isolated))), data_root())
    report = worker_module.Worker(Runner(Store(db), data_root(), resolve_device("cpu"))).run(plan)
    bar = bars[-1]
    selected = len(Store(db).runs_frame()) - 1  # every run but the dense one was selected
    assert report.trials == 2 * 4 and report.runs == 1 + selected
    assert bar.total == bar.n == 1 + 2 * 4 + selected

    # on a finished suite nothing is left: the bar is empty and full
    worker_module.Worker(Runner(Store(db), data_root(), resolve_device("cpu"))).run(plan)
    assert bars[-1].total == bars[-1].n == 0
