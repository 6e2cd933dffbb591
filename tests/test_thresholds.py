"""Per-group thresholds chosen on validation, against Fairlearn's ThresholdOptimizer."""
import numpy as np
import pytest
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import BaseEstimator, ClassifierMixin

from tiny import tiny_suite
from fairsqueeze.core.errors import ConfigError
from fairsqueeze.datasets.base import data_root
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.measure.thresholds import fit_group_thresholds
from fairsqueeze.store.database import Store
from fairsqueeze.spec.suite import parse_suite
from fairsqueeze.testing import tiny_suite_definition


def planted(n=4000, seed=0):
    """Scores of a model that is under-confident on group 0's positives: at 0.5 its TPR there
    is far below group 1's."""
    rng = np.random.default_rng(seed)
    s = (rng.random(n) < 0.5).astype(int)
    y = (rng.random(n) < 0.4).astype(int)
    shift = np.where(s == 0, -1.2, 0.0)
    logit = np.where(y == 1, 1.0, -1.5) + shift + rng.normal(0, 1.2, n)
    return 1 / (1 + np.exp(-logit)), y, s


def tpr(pred, y, s, g):
    return pred[(s == g) & (y == 1)].mean()


class Scores(ClassifierMixin, BaseEstimator):
    """A prefit 'estimator' whose probability is the score column itself."""

    def fit(self, x, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x):
        return np.column_stack([1 - x[:, 0], x[:, 0]])

    def predict(self, x):
        return (x[:, 0] >= 0.5).astype(int)


def fairlearn_accuracy(scores, y, s, constraint):
    optimizer = ThresholdOptimizer(estimator=Scores().fit(None, None), constraints=constraint, objective="accuracy_score",
                                   prefit=True, predict_method="predict_proba")
    optimizer.fit(scores[:, None], y, sensitive_features=s)
    pred = optimizer.predict(scores[:, None], sensitive_features=s, random_state=0)
    return (pred == y).mean(), pred


def test_equal_tpr_thresholds_match_fairlearns_accuracy_and_close_the_gap():
    scores, y, s = planted()
    plain = (scores >= 0.5).astype(int)
    assert tpr(plain, y, s, 1) - tpr(plain, y, s, 0) > 0.25  # the planted gap
    fitted = fit_group_thresholds(scores, y, s, "tpr")
    pred = fitted.apply(scores, s)
    assert abs(tpr(pred, y, s, 1) - tpr(pred, y, s, 0)) <= 0.01  # parity up to one row's granularity
    assert fitted.thresholds[0] < fitted.thresholds[1]  # the under-served group gets the lower bar
    oracle, oracle_pred = fairlearn_accuracy(scores, y, s, "true_positive_rate_parity")
    assert abs(tpr(oracle_pred, y, s, 1) - tpr(oracle_pred, y, s, 0)) <= 0.05
    assert (pred == y).mean() == pytest.approx(oracle, abs=0.01)


def test_equal_rate_thresholds_match_fairlearns_demographic_parity():
    scores, y, s = planted(seed=1)
    fitted = fit_group_thresholds(scores, y, s, "rate")
    pred = fitted.apply(scores, s)
    assert abs(pred[s == 0].mean() - pred[s == 1].mean()) <= 0.01
    oracle, _ = fairlearn_accuracy(scores, y, s, "demographic_parity")
    assert (pred == y).mean() == pytest.approx(oracle, abs=0.01)


def test_swapping_the_groups_swaps_the_thresholds():
    scores, y, s = planted()
    a = fit_group_thresholds(scores, y, s, "tpr").thresholds
    b = fit_group_thresholds(scores, y, 1 - s, "tpr").thresholds
    assert a[0] == b[1] and a[1] == b[0]


def test_the_engine_post_step_composes_with_any_method(isolated):
    suite = tiny_suite(["dense", {"name": "dense", "post": "equal_tpr_thresholds"},
                        {"name": "magnitude_prune", "params": {"ratio": 0.5}, "post": "equal_tpr_thresholds"}],
                       epochs=1)
    labels = [m.label for m in suite.methods]
    assert labels[1] == "dense(post=equal_tpr_thresholds)"
    store = Store(f"sqlite:///{isolated}/r.db")
    report = Runner(store, data_root(), resolve_device("cpu")).run(suite)
    assert not report.failed
    runs = store.runs_frame()
    assert len(set(runs["key"])) == 3  # the step is part of the run key
    assert set(runs["method"]) == {"dense", "dense+equal_tpr_thresholds", "magnitude_prune+equal_tpr_thresholds"}
    for row in runs[runs["method"] != "dense"].itertuples():
        assert row.info["post"]["constraint"] == "tpr"
    post = runs[runs["info"].map(lambda i: "post" in i)]
    for row in post.itertuples():
        val = store.predictions(row.key, "val")
        gap = abs(tpr(val["y_pred"], val["y"], val["s"], 1) - tpr(val["y_pred"], val["y"], val["s"], 0))
        positives = min(((val["s"] == g) & (val["y"] == 1)).sum() for g in (0, 1))
        assert gap <= 1 / positives + 1e-9  # equal TPR on validation, up to one row
        thresholds = {int(g): t for g, t in row.info["post"]["thresholds"].items()}
        assert set(thresholds) == {0, 1}


def test_a_multiclass_task_refuses_the_thresholds():
    definition = tiny_suite_definition([{"name": "dense", "post": "equal_tpr_thresholds"}])
    definition["tasks"] = [{"name": "digits", "options": {"target": "digit"}}]
    from fairsqueeze.engine.plan import plan_suite

    with pytest.raises(ConfigError, match="needs a binary task"):
        plan_suite(parse_suite(definition), data_root())
    with pytest.raises(ConfigError, match="unknown step"):
        tiny_suite([{"name": "dense", "post": "platt"}])


def test_the_bar_claims_pair_a_fair_method_with_its_thresholded_twin(isolated):
    from pathlib import Path

    from fairsqueeze.reports.api import open_results

    definition = tiny_suite_definition(
        ["dense", {"name": "fairprune", "params": {"ratio": 0.3, "scoring_size": 16}},
         {"name": "magnitude_prune", "params": {"ratio": 0.3}},
         {"name": "magnitude_prune", "params": {"ratio": 0.3}, "post": "equal_tpr_thresholds"}], seeds=[0, 1])
    definition["train"].update(epochs=40, patience=2)  # trained to a plateau: an underfit reference leaves the pairs
    suite = parse_suite(definition)
    url = f"sqlite:///{isolated}/r.db"
    Runner(Store(url), data_root(), resolve_device("cpu")).run(suite)
    bar = Path(__file__).parents[1] / "reports" / "claims_bar.yaml"
    table = open_results(url, claims=[str(bar)]).verdicts(suite.name).set_index("id")
    assert table.loc["bar-fairprune-vs-magnitude-thresholds", "pairs"] == 2
    # the paper's claim still pairs FairPrune with plain magnitude pruning only, not the thresholded runs
    assert table.loc["fairprune-vs-magnitude", "pairs"] == 2
    pairs = open_results(url, claims=[str(bar)]).pairs("bar-fairprune-vs-magnitude-thresholds", suite.name)
    keys = set(Store(url).runs_frame().query("method == 'magnitude_prune+equal_tpr_thresholds'")["key"])
    twins = {k for runs in pairs["twin_runs"] for k in (runs if isinstance(runs, (list, tuple)) else str(runs).split(","))}
    assert twins and twins <= keys
