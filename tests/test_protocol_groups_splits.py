"""The protected group's rule (accuracy or TPR) and per-seed splits."""
import numpy as np
import pytest
import torch

from tiny import tiny_suite
from fairsqueeze.core.errors import ConfigError
from fairsqueeze.datasets.base import Split, TaskData, build_task, data_root
from fairsqueeze.engine.plan import plan_suite
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.measure.groups import group_scores, worse_group
from fairsqueeze.methods import MethodContext, Predictions
from fairsqueeze.store.database import Store
from fairsqueeze.testing import tiny_suite_definition
from fairsqueeze.spec.suite import parse_suite

# A planted validation set where the rules disagree. Group 0: 10 positives, 10 negatives;
# the model finds 9 positives (TPR 0.9) but calls 6 negatives positive: accuracy 13/20 = 0.65.
# Group 1: 10 positives, 10 negatives; TPR 5/10 = 0.5, no false positive: accuracy 15/20 = 0.75.
Y = np.array([1] * 10 + [0] * 10 + [1] * 10 + [0] * 10)
S = np.array([0] * 20 + [1] * 20)
P = np.array([1] * 9 + [0] + [1] * 6 + [0] * 4 + [1] * 5 + [0] * 5 + [0] * 10)


def test_the_rules_read_the_planted_groups_by_hand():
    assert group_scores(Y, P, S, "accuracy") == {0: 13 / 20, 1: 15 / 20}
    assert group_scores(Y, P, S, "tpr") == {0: 0.9, 1: 0.5}
    assert worse_group(Y, P, S, "accuracy") == 0
    assert worse_group(Y, P, S, "tpr") == 1


def test_swapping_the_groups_swaps_the_choice():
    assert worse_group(Y, P, 1 - S, "accuracy") == 1
    assert worse_group(Y, P, 1 - S, "tpr") == 0


def planted_context(protect: str | None = None) -> MethodContext:
    x = np.zeros((len(Y), 2), np.float32)
    split = Split(x, Y, S, np.arange(len(Y)))
    task = TaskData("planted", split, split, split, 2, (2,), "y", "g", {0: "a", 1: "b"})
    kwargs = {} if protect is None else {"protect": protect}
    return MethodContext(model=torch.nn.Linear(2, 2), task=task.view(), device=torch.device("cpu"), seed=0,
                         dense_val=Predictions(Y, P, S), generator=torch.Generator(), **kwargs)


def test_the_method_context_protects_the_group_its_rule_names():
    assert planted_context().unprivileged_group() == 0  # the papers' rule stays the default
    assert planted_context("accuracy").unprivileged_group() == 0
    assert planted_context("tpr").unprivileged_group() == 1


def test_a_suite_names_the_rule_and_it_enters_the_label_and_the_run_key():
    default, tpr = tiny_suite(["fairprune", {"name": "fairprune", "protect": "tpr"}]).methods
    assert default.protect is None and tpr.protect == "tpr" and tpr.label == "fairprune(protect=tpr)"
    explicit = tiny_suite([{"name": "fairprune", "protect": "accuracy"}]).methods[0]
    assert explicit.protect is None  # the default spelled out is the same computation
    plan = plan_suite(tiny_suite(["fairprune", {"name": "fairprune", "protect": "tpr"}]), data_root())
    assert len({r.key for r in plan.runs}) == 2
    with pytest.raises(ConfigError, match="unknown rule 'fpr'"):
        tiny_suite([{"name": "fairprune", "protect": "fpr"}])


def test_every_run_stores_its_protected_group_and_rule(isolated):
    suite = tiny_suite(["dense", {"name": "fairprune", "params": {"ratio": 0.3, "scoring_size": 16},
                                  "protect": "tpr", "label": "fp-tpr"}], epochs=1)
    store = Store(f"sqlite:///{isolated}/r.db")
    Runner(store, data_root(), resolve_device("cpu")).run(suite)
    runs = store.runs_frame().set_index("method")
    for method, rule in (("dense", "accuracy"), ("fairprune", "tpr")):
        info = runs.loc[method, "info"]
        assert info["protect"]["rule"] == rule
        dense_val = store.predictions(runs.loc["dense", "key"], "val")
        assert info["protect"]["group"] == worse_group(dense_val["y"], dense_val["y_pred"], dense_val["s"], rule, 2)
    assert runs.loc["fairprune", "info"]["unprivileged_group"] == runs.loc["fairprune", "info"]["protect"]["group"]


# --- per-seed splits --------------------------------------------------------------------------

def digits(seed):
    return build_task("digits", None, target="parity", split_seed=seed)


def test_a_per_seed_split_is_disjoint_stratified_fresh_per_seed_and_repeatable():
    a, b, again = digits(3), digits(4), digits(3)
    for task in (a, b):
        parts = [set(task.train.index), set(task.val.index), set(task.test.index)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sum(map(len, parts)) == 1797
        for split in (task.train, task.val, task.test):  # every (y, s) cell keeps its share (rounding: 1 row)
            for y in (0, 1):
                for s in (0, 1):
                    cell = int(((task.test.y == y) & (task.test.s == s)).sum())
                    whole = int(((task.train.y == y) & (task.train.s == s)).sum()) + cell + int(
                        ((task.val.y == y) & (task.val.s == s)).sum())
                    assert abs(cell - 0.2 * whole) <= 1
    assert set(a.test.index) != set(b.test.index)
    assert np.array_equal(a.test.index, again.test.index) and np.array_equal(a.train.index, again.train.index)


def per_seed_suite(split_seed="per_seed"):
    definition = tiny_suite_definition(["dense"], seeds=[3, 4], epochs=1)
    definition["tasks"] = [{"name": "digits", "options": {"target": "parity", "split_seed": split_seed}}]
    return parse_suite(definition)


def test_the_plan_loads_one_split_per_seed_and_keys_runs_by_it():
    plan = plan_suite(per_seed_suite(), data_root())
    by_seed = {r.seed: r for r in plan.runs}
    assert len(plan.tasks) == 2
    for seed, spec in by_seed.items():
        task = plan.tasks[spec.task_instance]
        assert np.array_equal(task.test.index, digits(seed).test.index)
        assert spec.data == digits(seed).fingerprint
    assert by_seed[3].data != by_seed[4].data
    fixed = plan_suite(per_seed_suite(0), data_root())
    assert len(fixed.tasks) == 1 and len({r.data for r in fixed.runs}) == 1  # the fixed split stays the default


def test_runs_on_per_seed_splits_record_different_test_rows(isolated):
    store = Store(f"sqlite:///{isolated}/r.db")
    report = Runner(store, data_root(), resolve_device("cpu")).run(per_seed_suite())
    assert not report.failed
    runs = store.runs_frame().set_index("seed")
    rows = {seed: set(store.predictions(runs.loc[seed, "key"], "test")["index"]) for seed in (3, 4)}
    assert rows[3] == set(digits(3).test.index) and rows[3] != rows[4]


def test_a_task_without_a_split_seed_refuses_per_seed():
    definition = tiny_suite_definition(["dense"])
    definition["tasks"] = [{"name": "digits", "options": {"split_seed": "per_seed", "target": "parity"}}]
    parse_suite(definition)  # digits has a split_seed: accepted
    definition["tasks"][0]["options"]["split_seed"] = "each"
    with pytest.raises(ConfigError):
        parse_suite(definition)


def test_a_group_without_positives_is_passed_over_by_the_tpr_rule():
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1])  # group 0: TPR 0; group 1: no positives, accuracy 0
    assert worse_group(y, pred, s, "tpr") == 0
    assert worse_group(y, pred, s, "accuracy") == 1
    assert worse_group(y[3:], pred[3:], s[3:], "tpr") == 1  # only undefined TPRs: accuracy decides


def test_a_tuned_entry_keeps_its_rule_in_trials_and_selected_runs(isolated):
    from fairsqueeze.engine.worker import Worker

    definition = tiny_suite_definition([{"name": "fairprune", "params": {"ratio": 0.3, "scoring_size": 16},
                                         "protect": "tpr", "tune": {"trials": 4}}], epochs=2)
    definition["tuning"] = {"trials": 4, "sampler": {"name": "random", "seed": 1}, "policies": ["best_utility"]}
    suite = parse_suite(definition)
    store = Store(f"sqlite:///{isolated}/r.db")
    runner = Runner(store, data_root(), resolve_device("cpu"))
    plan = plan_suite(suite, data_root())
    runner.run(plan)
    work = Worker(runner).run(plan)
    assert work.runs == 1 and not work.failed
    selected = store.runs_frame()
    selected = selected[selected["method"] == "fairprune"]
    assert len(selected) == 1 and selected.iloc[0]["info"]["protect"]["rule"] == "tpr"
