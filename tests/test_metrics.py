"""Tests for fairsqueeze.measure.metrics against hand arithmetic, scikit-learn and Fairlearn."""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, f1_score, multilabel_confusion_matrix,
                             precision_score, recall_score)

from fairsqueeze.measure import metrics as M
from fairsqueeze.measure.metrics import METRICS, EmptyCellWarning, GroupSetWarning, compute_metrics, equal_opportunity, metric_def, per_group_table

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")


def cells(*spec: tuple[int, int, int, int]):
    """Arrays (y, y_pred, s) from (group, y, y_pred, count) cells of a confusion table."""
    rows = [(y, p, g) for g, y, p, n in spec for _ in range(n)]
    y, p, s = (np.array(col, dtype=np.int64) for col in zip(*rows))
    return y, p, s


@contextmanager
def no_empty_cell_warning():
    """An EmptyCellWarning inside this block fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyCellWarning)
        yield


# ------------------------------------------------------------------ hand-computed examples

# Binary, 4 rows per group.
#   group 0: y = 1 1 0 0, ŷ = 1 0 0 0      group 1: y = 1 1 0 0, ŷ = 1 1 1 0
BINARY = (np.array([1, 1, 0, 0, 1, 1, 0, 0]), np.array([1, 0, 0, 0, 1, 1, 1, 0]),
          np.array([0, 0, 0, 0, 1, 1, 1, 1]))


def test_binary_hand_example_both_eopp_forms():
    m = compute_metrics(*BINARY)
    # One-vs-rest, K = 2.
    #   g0 class 1: TP=1 FN=1 FP=0 TN=2 -> TPR 1/2, TNR 1,   FPR 0
    #   g0 class 0: TP=2 FN=0 FP=1 TN=1 -> TPR 1,   TNR 1/2, FPR 1/2
    #   g1 class 1: TP=2 FN=0 FP=1 TN=1 -> TPR 1,   TNR 1/2, FPR 1/2
    #   g1 class 0: TP=1 FN=1 FP=0 TN=2 -> TPR 1/2, TNR 1,   FPR 0
    # Δ = g1 − g0: class 0: ΔTPR −1/2, ΔTNR +1/2, ΔFPR −1/2; class 1: +1/2, −1/2, +1/2
    assert m["eopp0_sum"] == pytest.approx(1.0)  # 1/2 + 1/2
    assert m["eopp1_sum"] == pytest.approx(1.0)  # 1/2 + 1/2
    assert m["eodd_sum"] == pytest.approx(2.0)   # |−1/2 − 1/2| + |1/2 + 1/2|
    assert m["eopp0"] == pytest.approx(0.5)      # 1.0 / K
    assert m["eopp1"] == pytest.approx(0.5)      # 1.0 / K  (= (|ΔTPR_pos| + |ΔFPR_pos|)/2)
    assert m["eodd"] == pytest.approx(0.5)       # 2.0 / (2K)
    # positive class: TPR 1/2 vs 1, FPR 0 vs 1/2
    assert (m["tpr[g=0]"], m["tpr[g=1]"]) == pytest.approx((0.5, 1.0))
    assert (m["fpr[g=0]"], m["fpr[g=1]"]) == pytest.approx((0.0, 0.5))
    assert m["deo"] == pytest.approx(0.5)
    assert m["fpr_diff"] == pytest.approx(0.5)
    # P(ŷ=1): 1/4 vs 3/4 -> dp_diff 1/2; the L1 form counts class 0 as well -> 1
    assert m["dp_diff"] == pytest.approx(0.5)
    assert m["dp_l1"] == pytest.approx(1.0)
    # both groups have accuracy 3/4: FairALM's "DDP" (accuracy parity) is 0 although DP is not
    assert m["ddp_fairalm"] == 0.0
    assert m["accuracy[g=0]"] == m["accuracy[g=1]"] == 0.75


def test_eodd_takes_abs_after_adding_tpr_and_fpr_gaps():
    # g0: y = 1 1 0 0, ŷ = 1 0 1 0 -> TPR 1/2, FPR 1/2;  g1: ŷ = y -> TPR 1, FPR 0
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    p = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    s = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    m = compute_metrics(y, p, s)
    # class 1: ΔTPR +1/2, ΔFPR −1/2 -> |0| ; class 0: ΔTPR = −ΔFPR_1 = +1/2, ΔFPR = −1/2 -> |0|
    assert m["eodd"] == 0.0 and m["eodd_sum"] == 0.0
    # eopp1 sums absolute values: (|+1/2| + |+1/2|) / 2
    assert m["eopp1"] == pytest.approx(0.5)
    assert m["deo"] == pytest.approx(0.5)


# 3 classes, 4 rows per group.
#   group 0: y = 0 1 2 2, ŷ = 0 1 2 0      group 1: y = 0 0 1 2, ŷ = 0 1 1 2
THREE = (np.array([0, 1, 2, 2, 0, 0, 1, 2]), np.array([0, 1, 2, 0, 0, 1, 1, 2]),
         np.array([0, 0, 0, 0, 1, 1, 1, 1]))


def test_three_class_hand_example_both_eopp_forms():
    m = compute_metrics(*THREE)
    #   g0 class 0: TP=1 FN=0 FP=1 TN=2 -> TPR 1,   TNR 2/3, FPR 1/3
    #   g0 class 1: TP=1 FN=0 FP=0 TN=3 -> TPR 1,   TNR 1,   FPR 0
    #   g0 class 2: TP=1 FN=1 FP=0 TN=2 -> TPR 1/2, TNR 1,   FPR 0
    #   g1 class 0: TP=1 FN=1 FP=0 TN=2 -> TPR 1/2, TNR 1,   FPR 0
    #   g1 class 1: TP=1 FN=0 FP=1 TN=2 -> TPR 1,   TNR 2/3, FPR 1/3
    #   g1 class 2: TP=1 FN=0 FP=0 TN=3 -> TPR 1,   TNR 1,   FPR 0
    # Δ: class 0: ΔTPR −1/2, ΔTNR +1/3, ΔFPR −1/3
    #    class 1: ΔTPR 0,    ΔTNR −1/3, ΔFPR +1/3
    #    class 2: ΔTPR +1/2, ΔTNR 0,    ΔFPR 0
    assert m["eopp0_sum"] == pytest.approx(2 / 3)   # 1/3 + 1/3 + 0
    assert m["eopp1_sum"] == pytest.approx(1.0)     # 1/2 + 0 + 1/2
    assert m["eodd_sum"] == pytest.approx(5 / 3)    # 5/6 + 1/3 + 1/2
    assert m["eopp0"] == pytest.approx(2 / 9)       # (2/3) / 3
    assert m["eopp1"] == pytest.approx(1 / 3)       # 1 / 3
    assert m["eodd"] == pytest.approx(5 / 18)       # (5/3) / 6
    # P(ŷ=k): g0 (1/2, 1/4, 1/4), g1 (1/4, 1/2, 1/4) -> 1/4 + 1/4 + 0
    assert m["dp_l1"] == pytest.approx(0.5)
    # binary-only metrics are not applicable (dp_diff keeps one scale: it is not the L1 form here)
    for key in ("deo", "fpr_diff", "tpr[g=0]", "fpr[g=1]", "dp_diff"):
        assert math.isnan(m[key]), key
    # g0 macro precision: class 0 1/2, class 1 1, class 2 1 -> 5/6; recall 1, 1, 1/2 -> 5/6
    assert m["precision[g=0]"] == pytest.approx(5 / 6)
    assert m["recall[g=0]"] == pytest.approx(5 / 6)
    # g0 F1 = 2TP/(2TP+FP+FN): 2/3, 1, 2/3 -> 7/9
    assert m["f1[g=0]"] == pytest.approx(7 / 9)


# Class 2 occurs in group 0 only.
#   group 0: y = 0 1 2, ŷ = 0 1 2 (perfect)      group 1: y = 0 1, ŷ = 0 0
MISSING = (np.array([0, 1, 2, 0, 1]), np.array([0, 1, 2, 0, 0]), np.array([0, 0, 0, 1, 1]))


def test_class_missing_from_a_group_counts_zero_by_default():
    # g0: TPR 1, TNR 1, FPR 0 for every class.
    # g1 class 0: TP=1 FN=0 FP=1 TN=0 -> TPR 1, TNR 0, FPR 1
    # g1 class 1: TP=0 FN=1 FP=0 TN=1 -> TPR 0, TNR 1, FPR 0
    # g1 class 2: TP=0 FN=0 -> TPR 0/0 := 0;  FP=0 TN=2 -> TNR 1, FPR 0
    with no_empty_cell_warning():  # 0 is the definition here, not an empty-cell fallback
        m = compute_metrics(*MISSING)
    assert m["eopp1_sum"] == pytest.approx(2.0)   # |0| + |−1| + |0 − 1|
    assert m["eopp1"] == pytest.approx(2 / 3)
    assert m["eopp0_sum"] == pytest.approx(1.0)   # |0 − 1| + 0 + 0
    assert m["eodd_sum"] == pytest.approx(3.0)    # |0 + 1| + |−1 + 0| + |−1 + 0|
    assert m["eodd"] == pytest.approx(0.5)        # 3 / (2·3)


def test_empty_nan_leaves_undefined_classes_out():
    with pytest.warns(EmptyCellWarning):
        m = compute_metrics(*MISSING, empty="nan")
    # class 2's TPR is undefined in g1 -> class 2 drops out of eopp1 and eodd only
    assert m["eopp1_sum"] == pytest.approx(1.0)   # |0| + |−1|
    assert m["eopp1"] == pytest.approx(0.5)       # mean over the 2 defined classes
    assert m["eodd_sum"] == pytest.approx(2.0)    # |0 + 1| + |−1 + 0|
    assert m["eodd"] == pytest.approx(0.5)        # 2 / (2·2)
    assert m["eopp0_sum"] == pytest.approx(1.0)   # every TNR is defined: unchanged
    assert m["eopp0"] == pytest.approx(1 / 3)
    with pytest.warns(EmptyCellWarning):
        assert equal_opportunity(*MISSING, empty="nan") == {k: m[k] for k in M.EOPP_KEYS}


def test_num_classes_widens_k_in_table_form_only():
    # an extra class 3 absent from both groups: TPR 0 vs 0, TNR 1 vs 1 -> adds nothing to the sums
    base = compute_metrics(*THREE)
    wide = compute_metrics(*THREE, num_classes=4)
    for name in ("eopp0", "eopp1", "eodd"):
        assert wide[f"{name}_sum"] == pytest.approx(base[f"{name}_sum"])
    assert wide["eopp1"] == pytest.approx(1 / 4)      # 1 / 4 instead of 1 / 3
    assert wide["eodd"] == pytest.approx(5 / 24)      # (5/3) / 8
    with pytest.raises(ValueError, match="num_classes"):
        compute_metrics(*THREE, num_classes=2)


def test_equal_opportunity_matches_compute_metrics():
    m = compute_metrics(*THREE)
    assert equal_opportunity(*THREE) == {k: m[k] for k in M.EOPP_KEYS}
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(*THREE, empty="one")


# ------------------------------------------------------------------ oracles on random data


def random_task(seed: int, n: int, num_classes: int, num_groups: int, unknown: float = 0.1):
    """Skewed labels so that some classes are rare or missing in some groups."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(num_classes, 0.7))
    y = rng.choice(num_classes, n, p=probs)
    flip = rng.random(n) < 0.35
    y_pred = np.where(flip, rng.choice(num_classes, n, p=probs), y)
    s = rng.integers(0, num_groups, n)
    s[rng.random(n) < unknown] = -1
    return y, y_pred, s


@pytest.mark.parametrize("seed,num_classes,num_groups", [(0, 2, 2), (1, 5, 2), (2, 7, 3), (3, 4, 4)])
def test_per_group_scores_match_sklearn(seed, num_classes, num_groups):
    y, p, s = random_task(seed, 120, num_classes, num_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny groups may lack a class; not under test here
        m = compute_metrics(y, p, s)
    prec, rec, f1s, accs = [], [], [], []
    for g in np.unique(s[s >= 0]):
        yg, pg = y[s == g], p[s == g]
        prec.append(precision_score(yg, pg, average="macro", zero_division=0))
        rec.append(recall_score(yg, pg, average="macro", zero_division=0))
        f1s.append(f1_score(yg, pg, average="macro", zero_division=0))
        accs.append(accuracy_score(yg, pg))
        assert m[f"precision[g={g}]"] == pytest.approx(prec[-1])
        assert m[f"recall[g={g}]"] == pytest.approx(rec[-1])
        assert m[f"f1[g={g}]"] == pytest.approx(f1s[-1])
        assert m[f"accuracy[g={g}]"] == pytest.approx(accs[-1])
        assert m[f"support[g={g}]"] == len(yg)
    assert m["precision_avg"] == pytest.approx(np.mean(prec))
    assert m["recall_diff"] == pytest.approx(max(rec) - min(rec))
    assert m["f1_diff"] == pytest.approx(max(f1s) - min(f1s))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))   # all rows
    assert m["support_excluded"] == (s == -1).sum()


@pytest.mark.parametrize("seed,num_classes", [(10, 2), (11, 6), (12, 9)])
def test_eopp_matches_sklearn_multilabel_counts(seed, num_classes):
    y, p, s = random_task(seed, 150, num_classes, 2)
    m = compute_metrics(y, p, s)
    keep = s >= 0
    k = max(y[keep].max(), p[keep].max()) + 1
    rates = {}
    for g in (0, 1):
        # sklearn's per-class [[TN, FP], [FN, TP]] counts; 0/0 -> 0 as the papers' code does
        mcm = multilabel_confusion_matrix(y[s == g], p[s == g], labels=list(range(k)))
        tn, fp, fn, tp = (mcm[:, i // 2, i % 2].astype(float) for i in range(4))
        div = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
        rates[g] = div(tp, tp + fn), div(tn, tn + fp), div(fp, fp + tn)
    d_tpr, d_tnr, d_fpr = (rates[1][i] - rates[0][i] for i in range(3))
    assert m["eopp0_sum"] == pytest.approx(np.abs(d_tnr).sum())
    assert m["eopp1"] == pytest.approx(np.abs(d_tpr).mean())
    assert m["eodd"] == pytest.approx(np.abs(d_tpr + d_fpr).mean() / 2)


@pytest.mark.parametrize("seed,num_groups", [(20, 2), (21, 3)])
def test_binary_group_metrics_match_fairlearn(seed, num_groups):
    y, p, s = random_task(seed, 400, 2, num_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GroupSetWarning)  # eopp needs exactly groups 0, 1
        m = compute_metrics(y, p, s)
    keep = s >= 0
    yk, pk, sk = y[keep], p[keep], s[keep]
    frame = fairlearn_metrics.MetricFrame(
        metrics={"accuracy": accuracy_score, "recall": recall_score,
                 "fpr": fairlearn_metrics.false_positive_rate},
        y_true=yk, y_pred=pk, sensitive_features=sk)
    for g, row in frame.by_group.iterrows():
        assert m[f"accuracy[g={g}]"] == pytest.approx(row["accuracy"])
        assert m[f"tpr[g={g}]"] == pytest.approx(row["recall"])
        assert m[f"fpr[g={g}]"] == pytest.approx(row["fpr"])
    diff = frame.difference()
    assert m["ddp_fairalm"] == pytest.approx(diff["accuracy"])
    assert m["accuracy_diff"] == pytest.approx(diff["accuracy"])
    assert m["deo"] == pytest.approx(
        fairlearn_metrics.equal_opportunity_difference(yk, pk, sensitive_features=sk))
    assert m["fpr_diff"] == pytest.approx(diff["fpr"])
    assert m["dp_diff"] == pytest.approx(
        fairlearn_metrics.demographic_parity_difference(yk, pk, sensitive_features=sk))
    if num_groups == 2:  # binary: the L1 form counts the gap once per class
        assert m["dp_l1"] == pytest.approx(2 * m["dp_diff"])


# ------------------------------------------------------------------ FairLRF table convention


def test_avg_is_mean_of_group_values_not_pooled():
    # Per group both predicted classes have the same precision, so macro precision is that value:
    #   g0: 10000 rows predicted 0 (4824 right) + 10000 predicted 1 (4824 right) -> 0.4824
    #   g1:  5000 rows predicted 0 (2816 right) +  5000 predicted 1 (2816 right) -> 0.5632
    y, p, s = cells((0, 0, 0, 4824), (0, 1, 0, 5176), (0, 1, 1, 4824), (0, 0, 1, 5176),
                    (1, 0, 0, 2816), (1, 1, 0, 2184), (1, 1, 1, 2816), (1, 0, 1, 2184))
    m = compute_metrics(y, p, s)
    # table prints 0.482 / 0.563, Avg (0.4824 + 0.5632)/2 = 0.5228 -> 0.523, Diff 0.0808 -> 0.081
    assert round(m["precision[g=0]"], 3) == 0.482
    assert round(m["precision[g=1]"], 3) == 0.563
    assert m["precision_avg"] == pytest.approx(0.5228)
    assert round(m["precision_avg"], 3) == 0.523
    assert round(m["precision_diff"], 3) == 0.081
    # the pooled metric weighs group 0 twice: 7640/15000 per class -> 0.509, not the table's Avg
    pooled = precision_score(y, p, average="macro", zero_division=0)
    assert round(pooled, 3) == 0.509
    assert m["precision_avg"] != pytest.approx(pooled, abs=1e-3)


def test_diff_is_absolute_whichever_group_is_better():
    y, p, s = BINARY
    m_fwd = compute_metrics(y, p, s)
    m_rev = compute_metrics(y, p, 1 - s)   # swap the group labels
    for key in ("precision_diff", "recall_diff", "f1_diff", "eopp1", "eodd_sum", "dp_diff", "deo"):
        assert m_fwd[key] == pytest.approx(m_rev[key]) and m_fwd[key] >= 0, key
    # BINARY has equal group accuracies; a case where they differ:
    y2, p2, s2 = cells((0, 1, 1, 3), (0, 0, 0, 1), (1, 1, 0, 2), (1, 1, 1, 2), (1, 0, 0, 1))
    # g0 accuracy 4/4 = 1, g1 accuracy 3/5 = 0.6 -> diff 0.4 in both orders
    assert compute_metrics(y2, p2, s2)["accuracy_diff"] == pytest.approx(0.4)
    assert compute_metrics(y2, p2, 1 - s2)["accuracy_diff"] == pytest.approx(0.4)


# ------------------------------------------------------------------ empty cells and groups


def test_group_without_rows_is_nan_with_warning():
    y, p = np.array([0, 1, 1]), np.array([0, 1, 0])
    s = np.array([0, 0, 0])
    with pytest.warns(EmptyCellWarning, match="group 1 has no rows"):
        m = compute_metrics(y, p, s, groups=(0, 1))
    assert m["support[g=1]"] == 0
    for key in ("accuracy[g=1]", "precision[g=1]", "recall[g=1]", "f1[g=1]", "tpr[g=1]",
                "precision_avg", "accuracy_diff", "deo", "dp_diff", "eopp1", "eodd_sum"):
        assert math.isnan(m[key]), key
    assert m["accuracy[g=0]"] == pytest.approx(2 / 3)


def test_binary_group_without_positives_has_nan_tpr():
    # g1 has only negatives: TPR is 0/0
    y = np.array([1, 0, 1, 0, 0, 0])
    p = np.array([1, 0, 0, 0, 1, 0])
    s = np.array([0, 0, 0, 1, 1, 1])
    with pytest.warns(EmptyCellWarning, match=r"tpr\[g=1\]"):
        m = compute_metrics(y, p, s)
    assert math.isnan(m["tpr[g=1]"]) and math.isnan(m["deo"])
    assert m["tpr[g=0]"] == pytest.approx(0.5)
    assert m["fpr[g=1]"] == pytest.approx(1 / 3)
    assert m["fpr_diff"] == pytest.approx(1 / 3)   # g0 FPR 0/1 = 0
    assert not math.isnan(m["eopp1"])              # class-wise form: 0 by definition


def test_unknown_group_rows_are_excluded():
    base = compute_metrics(*THREE)
    y, p, s = THREE
    # two unknown-group rows, one with a label (5) that would widen K if it were counted
    y2, p2, s2 = np.r_[y, 5, 1], np.r_[p, 0, 1], np.r_[s, -1, -1]
    m = compute_metrics(y2, p2, s2)
    group_keys = [k for k in base if k not in ("support", "support_excluded", "accuracy")]
    assert {k: m[k] for k in group_keys} == pytest.approx({k: base[k] for k in group_keys}, nan_ok=True)
    assert m["support_excluded"] == 2 and m["support"] == 10
    assert m["accuracy"] == pytest.approx(7 / 10)   # 6 of 8 group rows + 1 of 2 unknown rows
    assert "support[g=-1]" not in m
    table = per_group_table(y2, p2, s2)
    assert list(table.index) == [0, 1]


def test_gap_metrics_need_groups_zero_and_one():
    y, p, s = random_task(30, 90, 2, 3, unknown=0.0)
    with pytest.warns(GroupSetWarning, match="eopp"):
        m = compute_metrics(y, p, s)
    assert all(math.isnan(m[k]) for k in M.EOPP_KEYS)
    rates = [p[s == g].mean() for g in (0, 1, 2)]
    assert m["dp_diff"] == pytest.approx(max(rates) - min(rates))   # still defined
    with pytest.warns(GroupSetWarning, match="two groups"):
        single = compute_metrics(y[s == 0], p[s == 0], s[s == 0])
    assert math.isnan(single["accuracy_diff"]) and math.isnan(single["dp_diff"])
    assert single["accuracy_avg"] == pytest.approx(single["accuracy[g=0]"])


# ------------------------------------------------------------------ table, registry, inputs


def test_per_group_table_rows_and_columns():
    y, p, s = random_task(40, 200, 2, 2)
    table = per_group_table(y, p, s)
    m = compute_metrics(y, p, s)
    assert list(table.columns) == ["support", "accuracy", "precision", "recall", "f1",
                                   "tpr", "fpr", "support[y=0]", "support[y=1]"]
    for g in (0, 1):
        for col in ("support", "accuracy", "precision", "recall", "f1", "tpr", "fpr"):
            assert table.loc[g, col] == pytest.approx(m[f"{col}[g={g}]"])
        assert table.loc[g, "support[y=1]"] == ((s == g) & (y == 1)).sum()
    multi = per_group_table(*THREE)
    assert "tpr" not in multi.columns
    # per (group, class) support: g0 has y = 0 1 2 2, g1 has y = 0 0 1 2
    assert multi[["support[y=0]", "support[y=1]", "support[y=2]"]].values.tolist() == [[1, 1, 2], [2, 1, 1]]
    assert isinstance(multi, pd.DataFrame) and multi.index.name == "group"


def test_every_key_has_a_documented_definition():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = compute_metrics(*random_task(50, 60, 4, 3)).keys()
    for key in keys:
        d = metric_def(key)
        assert d.kind in ("utility", "fairness", "support")
        if d.kind == "fairness":
            assert d.higher_is_better is False, key
    assert metric_def("precision[g=3]") is METRICS["precision[g]"]
    doc = M.__doc__
    for name in METRICS:
        bare = name.replace("_avg", "").replace("_diff", "") if name.endswith(("_avg", "_diff")) else name
        assert bare in doc, name
    with pytest.raises(KeyError):
        metric_def("eopp2")


@pytest.mark.parametrize("args,match", [
    (([0, 1], [0], [0, 1]), "length"),
    (([0.5, 1], [0, 1], [0, 1]), "integers"),
    (([0, 1], [0, 1], [0, -2]), "group ids"),
    (([0, -1], [0, 1], [0, 1]), "non-negative"),
])
def test_invalid_inputs_raise(args, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(*args)
