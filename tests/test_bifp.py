"""BiFP: the straight-through score masks, exact sparsity, filter removal, and the penalty's effect."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from fairsqueeze.measure.footprint import footprint
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import MethodContext
from fairsqueeze.methods.bifp import BiFP, BilevelTrainer, accuracy_gap, lth_sparsity
from fairsqueeze.methods.toolbox.masks import remove_filters
from fairsqueeze.methods.toolbox.score_masks import ScoreMasks, TopKStraightThrough
from fairsqueeze.datasets.base import Split, TaskData
from fairsqueeze.spec.train import TrainConfig
from fairsqueeze.engine.training import train_model


def context(model, task, seed=0):
    return MethodContext(copy.deepcopy(model), task.view(), torch.device("cpu"), seed, None,
                         torch.Generator().manual_seed(seed))


def minority_rule_task(n=3000, seed=0):
    """Group 0 (80 %) follows a linear rule, group 1 an XOR that costs a pruned net capacity."""
    rng = np.random.default_rng(seed)

    def split(offset, size):
        s = (rng.random(size) < 0.2).astype(np.int64)
        x = rng.normal(size=(size, 6)).astype(np.float32)
        y = np.where(s == 0, x[:, 0] + 0.5 * x[:, 2] > 0, x[:, 1] * x[:, 3] > 0).astype(np.int64)
        x = np.concatenate([x, s[:, None].astype(np.float32)], 1)
        return Split(x, y, s, np.arange(offset, offset + size))

    return TaskData("minority", split(0, n), split(n, n), split(2 * n, 10000), 2, (7,), "y", "s", {0: "a", 1: "b"})


def dense_mlp(task, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    train_model(model, task, TrainConfig(epochs=10, lr=0.05, batch_size=64), torch.device("cpu"), seed)
    return model


def group_accuracy(model, split):
    with torch.no_grad():
        pred = model(torch.as_tensor(split.x)).argmax(1).numpy()
    return [float((pred[split.s == g] == split.y[split.s == g]).mean()) for g in (0, 1)]


def test_fairness_penalty_shrinks_the_accuracy_gap_of_the_same_pruning():
    task = minority_rule_task()
    dense = dense_mlp(task)
    common = {"sparsity": 0.95, "structured": False, "epochs": 10, "batch_size": 128, "lr": 0.05,
              "mask_lr": 0.05, "temperature": 0.3}
    off = METHODS.get("bifp").from_config({**common, "fairness_weight": 0.0}).apply(context(dense, task))
    on = METHODS.get("bifp").from_config({**common, "fairness_weight": 1.0}).apply(context(dense, task))
    acc_off, acc_on = group_accuracy(off.model, task.test), group_accuracy(on.model, task.test)
    gap_off, gap_on = abs(acc_off[0] - acc_off[1]), abs(acc_on[0] - acc_on[1])
    assert gap_off > 0.25  # pruning without the penalty gives up the minority's rule
    assert gap_on < 0.5 * gap_off
    assert min(acc_on) > 0.75  # by learning the minority rule, not by failing both groups
    assert off.info["penalty"] == "none" and on.info["penalty"] == "abs"
    # the same pruning: identical sparsity and cost
    assert on.info["achieved_sparsity"] == off.info["achieved_sparsity"]
    assert on.cost.steps == off.cost.steps == 10 * 2 * -(-3000 // 128)


def test_penalty_switched_off_at_both_levels_is_the_unpenalised_run():
    task = minority_rule_task(n=400)
    dense = dense_mlp(task)
    common = {"sparsity": 0.5, "structured": False, "epochs": 2, "batch_size": 64, "lr": 0.05}
    none = METHODS.get("bifp").from_config({**common, "fair_levels": "none"}).apply(context(dense, task)).model
    zero = METHODS.get("bifp").from_config({**common, "fairness_weight": 0.0}).apply(context(dense, task)).model
    pen = METHODS.get("bifp").from_config(common).apply(context(dense, task)).model
    assert all(torch.equal(a, b) for a, b in zip(none.parameters(), zero.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(none.parameters(), pen.parameters()))


@pytest.mark.parametrize("sparsity", [0.2, lth_sparsity(4), 0.9])
def test_unstructured_sparsity_is_exact_in_every_layer(sparsity):
    task = minority_rule_task(n=300)
    dense = dense_mlp(task)
    method = METHODS.get("bifp").from_config({"sparsity": sparsity, "structured": False, "epochs": 2,
                                              "batch_size": 64, "lr": 0.05, "schedule": "lth"})
    outcome = method.apply(context(dense, task))
    model = outcome.model
    assert sorted(dict(model.named_parameters())) == sorted(dict(dense.named_parameters()))  # masks baked in
    for name in ("0.weight", "2.weight"):
        weight = dict(model.named_parameters())[name]
        assert int((weight == 0).sum()) == int(np.floor(round(sparsity * weight.numel(), 9)))
    assert int((model[4].weight == 0).sum()) == 0  # the classifier stays dense
    assert outcome.info["achieved_sparsity"] == pytest.approx(sparsity, abs=1 / 224)


def test_lth_schedule_rises_as_the_lottery_ticket_levels_and_ends_at_the_target():
    method = BiFP(BiFP.Params(sparsity=0.6, schedule="lth", epochs=6))
    assert [round(method.sparsity_at(e), 4) for e in range(6)] == [0.2, 0.36, 0.488, 0.5904, 0.6, 0.6]
    short = BiFP(BiFP.Params(sparsity=0.6, schedule="lth", epochs=2))
    assert [short.sparsity_at(e) for e in range(2)] == [pytest.approx(0.2), 0.6]


def test_straight_through_top_k_mask_and_its_gradient():
    scores = torch.tensor([0.3, -0.9, 0.1, 0.5], requires_grad=True)
    mask = TopKStraightThrough.apply(scores.abs(), 2)
    assert mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (mask * upstream).sum().backward()
    # straight through the top-k, then the chain rule of |.|
    assert scores.grad.tolist() == [1.0, -2.0, 3.0, 4.0]


def test_weight_mask_gradient_reaches_every_score_as_autograd_of_the_product():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    theta = layer.weight.detach().clone()
    masks = ScoreMasks(nn.Sequential(layer), ["0"], 0.5, structured=False)
    x = torch.randn(5, 4)
    layer(x).square().sum().backward()
    score = masks.layers["0"][1]
    m = score.mask().detach().requires_grad_(True)
    (nn.functional.linear(x, theta * m, layer.bias)).square().sum().backward()
    assert int(score.mask().sum()) == 6
    assert torch.allclose(score.scores.grad, m.grad * score.scores.sign())  # pruned entries get gradient too


def _bip_score_gradients(model, masks, objective, batch, lr2):
    """A transcription of BiP's bi-level step (trainer/bilevel.py) for the scores: the loss
    gradient once with weights and scores trainable ("bilevel" mode), once with the scores
    only ("prune" mode), at the same point; the score gradient plus −lr2 times their product."""
    scores = masks.scores()
    bilevel = torch.autograd.grad(objective(model, batch, "mask"), [*masks.weights(), *scores])[-len(scores):]
    for w in masks.weights():
        w.requires_grad_(False)
    prune = torch.autograd.grad(objective(model, batch, "mask"), scores)
    for w in masks.weights():
        w.requires_grad_(True)
    return [g_prune + (-lr2 * g_prune * g_bilevel) for g_prune, g_bilevel in zip(prune, bilevel)]


@pytest.mark.parametrize("structured", [False, True])
def test_implicit_gradient_term_is_bips_product_of_score_gradients(structured):
    from fairsqueeze.methods.bifp import FairObjective
    from fairsqueeze.engine.training import Batch

    task = minority_rule_task(n=64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    masks = ScoreMasks(model, ["0", "2"], 0.5, structured=structured)
    objective = FairObjective(1.0, "abs", 0.0, "both", 0.3)
    kappa = 50.0  # large enough for the term to show next to the gradient
    trainer = BilevelTrainer(model, task, TrainConfig(epochs=1), torch.device("cpu"), 0, masks=masks,
                             objective=objective, mask_lr=0.1, kappa=kappa)
    split = task.train
    batch = Batch(torch.as_tensor(split.x), torch.as_tensor(split.y), torch.as_tensor(split.s), np.arange(64))
    expected = _bip_score_gradients(model, masks, objective, batch, kappa)
    trainer.zero_grad()
    objective(model, batch, "mask").backward()
    plain = [p.grad.clone() for p in masks.scores()]
    trainer.add_implicit_gradient()
    for score, want, g in zip(masks.scores(), expected, plain):
        assert torch.allclose(score.grad, want, rtol=1e-5, atol=1e-12)
        assert not torch.allclose(score.grad, g)  # the term is there
        assert torch.allclose(score.grad, g - kappa * g * g)  # −κ·g_s², no weight factor, no sign
    trainer.kappa = 0.0  # switched off: the straight-through gradient alone
    for score, g in zip(masks.scores(), plain):
        score.grad = g.clone()
    trainer.add_implicit_gradient()
    assert all(torch.equal(score.grad, g) for score, g in zip(masks.scores(), plain))


def _final_masks(dense, task, monkeypatch=None, **params):
    common = {"sparsity": 0.5, "structured": False, "epochs": 3, "batch_size": 64, "lr": 0.05, "mask_lr": 0.05}
    outcome = METHODS.get("bifp").from_config({**common, **params}).apply(context(dense, task))
    return [(p == 0) for n, p in outcome.model.named_parameters() if n.endswith("weight")]


def test_a_large_kappa_changes_the_masks_and_kappa_zero_is_no_term(monkeypatch):
    task = minority_rule_task(n=600)
    dense = dense_mlp(task)
    zero = _final_masks(dense, task, kappa=0.0)
    large = _final_masks(dense, task, kappa=1000.0)
    assert any(not torch.equal(a, b) for a, b in zip(zero, large))
    monkeypatch.setattr(BilevelTrainer, "add_implicit_gradient", lambda self: None)
    without = _final_masks(dense, task, kappa=1000.0)
    assert all(torch.equal(a, b) for a, b in zip(zero, without))


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 2))


def test_filter_mask_equals_removing_the_filters():
    model = conv_net()
    x = torch.randn(6, 1, 4, 4)
    masks = ScoreMasks(model, ["0", "2"], 0.5, structured=True)
    with torch.no_grad():
        masked = model(x)
    keep = masks.masks()
    masks.remove()
    remove_filters(model, x[:1], keep)
    assert model[0].out_channels == 4 and model[2].out_channels == 4 and model[5].in_features == 4 * 16
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_structured_bifp_returns_a_smaller_model():
    rng = np.random.default_rng(0)
    n = 200
    s = (rng.random(n) < 0.4).astype(np.int64)
    x = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.int64)
    split = Split(x, y, s, np.arange(n))
    task = TaskData("tiny-images", split, split, split, 2, (1, 4, 4), "y", "s", {0: "a", 1: "b"})
    dense = conv_net()
    outcome = METHODS.get("bifp").from_config({"sparsity": 0.5, "epochs": 2, "batch_size": 32, "lr": 0.01}).apply(
        context(dense, task))
    assert outcome.info["filters_kept"] == {"0": 4, "2": 4}
    assert footprint(outcome.model)["params"] < footprint(dense)["params"]
    assert outcome.info["achieved_sparsity"] == 0.5


def test_relaxed_gap_by_hand_and_a_missing_group():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    p = torch.softmax(logits, 1)
    gap, present = accuracy_gap(logits, y, torch.tensor([0, 1, 1]))
    assert present and torch.isclose(gap, (p[1, 0] + p[2, 1]) / 2 - p[0, 0])
    gap, present = accuracy_gap(logits, y, torch.tensor([0, 0, 0]))
    assert not present and torch.isfinite(gap)
