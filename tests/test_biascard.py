"""Bias cards: group sizes, base rates and the dense model's per-group rates, by hand."""
import numpy as np
import pytest

from fairsqueeze.measure.biascard import bias_card, format_bias_card, is_underfit
from fairsqueeze.datasets.base import Split, TaskData


def task(train_y, train_s, val_y, val_s, classes=2):
    def split(y, s):
        y, s = np.asarray(y), np.asarray(s)
        return Split(np.zeros((len(y), 1), np.float32), y, s, np.arange(len(y)))

    return TaskData("toy", split(train_y, train_s), split(val_y, val_s), split([0], [0]),
                    classes, (1,), "y", "s", {0: "a", 1: "b"})


def test_binary_card_matches_hand_counts():
    # train: group 0 has labels 1,0,0,0 (base rate 1/4); group 1 has 1,1,0 (2/3); one unknown row
    t = task([1, 0, 0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, -1],
             # val group 0: y 1 1 0 0, pred 1 0 0 0 -> acc 3/4, tpr 1/2, fpr 0
             # val group 1: y 1 0 0,   pred 1 1 0   -> acc 2/3, tpr 1,   fpr 1/2
             [1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1])
    card = bias_card(t, np.array([1, 0, 0, 0, 1, 1, 0]))
    assert card["base_rates"] == {0: pytest.approx(0.25), 1: pytest.approx(2 / 3)}
    assert card["groups"][0]["train_support"] == 4 and card["groups"][1]["train_support"] == 3
    assert card["unknown_group_rows"] == 1
    assert card["groups"][0]["accuracy"] == pytest.approx(0.75)
    assert card["groups"][1]["fpr"] == pytest.approx(0.5)
    assert card["accuracy_gap"] == pytest.approx(0.75 - 2 / 3)
    assert card["tpr_gap"] == pytest.approx(0.5) and card["fpr_gap"] == pytest.approx(0.5)
    assert card["informative"] is True
    assert "informative" in format_bias_card(card)


def test_equal_groups_are_not_informative():
    t = task([0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1])
    card = bias_card(t, np.array([0, 1, 0, 1]))  # perfect on both groups: no gap at all
    assert card["accuracy_gap"] == 0 and card["tpr_gap"] == 0 and card["informative"] is False
    assert "NOT informative" in format_bias_card(card)


def test_multiclass_card_has_label_distributions():
    t = task([0, 1, 2, 2], [0, 0, 1, 1], [0, 1, 2, 2], [0, 0, 1, 1], classes=3)
    card = bias_card(t, np.array([0, 0, 2, 2]))  # group 0: 1/2 right, group 1: all right
    assert card["base_rates"] == {0: [0.5, 0.5, 0.0], 1: [0.0, 0.0, 1.0]}
    assert "tpr_gap" not in card and card["accuracy_gap"] == pytest.approx(0.5)


def test_a_constant_dense_model_is_never_informative():
    # base rates 0 and 1/2 per group: a model that always says 0 is right on 100 % of group 0
    # and 50 % of group 1, a 0.5 "gap" that is only the difference of the base rates
    t = task([0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1])
    card = bias_card(t, np.array([0, 0, 0, 0]))
    assert card["accuracy_gap"] == pytest.approx(0.5) and card["dense"]["constant"]
    assert card["informative"] is False
    assert "constant" in format_bias_card(card)
    # the same gap from a model that predicts both classes is informative (the rule is unchanged)
    assert bias_card(t, np.array([0, 1, 0, 0]))["informative"] is True


def test_an_undefined_rate_gives_an_undefined_gap_not_zero():
    # val group 1 holds no positive: its TPR is undefined, so the TPR gap is too
    t = task([0, 1, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 1, 1])
    card = bias_card(t, np.array([1, 0, 0, 1]))
    assert np.isnan(card["groups"][1]["tpr"]) and np.isnan(card["tpr_gap"])
    assert card["fpr_gap"] == pytest.approx(0.5)
    text = format_bias_card(card)
    assert "tpr_gap undefined" in text and "tpr_gap 0.000" not in text


def test_the_card_shows_the_reference_training_and_its_underfit_flag():
    t = task([0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1])
    reference = {"underfit": True, "reasons": ["validation loss still falling at the last of 1 epoch(s)"],
                 "epochs_used": 1, "best_epoch": 1, "stopped_early": False, "majority_rate": 0.5}
    card = bias_card(t, np.array([0, 1, 0, 0]), reference, dense_test_pred=np.array([0]))
    assert card["dense"]["val_accuracy"] == pytest.approx(0.75) and card["dense"]["test_accuracy"] == 1.0
    assert card["dense"]["underfit"] and is_underfit(card)
    text = format_bias_card(card)
    assert text.startswith("UNDERFIT reference: validation loss still falling")
    assert "1 epoch(s), best 1" in text and "majority-class rate 0.500" in text
    assert not is_underfit(bias_card(t, np.array([0, 1, 0, 0])))
