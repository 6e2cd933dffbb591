"""FairALM and its baselines: the constraint pieces, and the effect on a task built to need it."""
import copy
import itertools
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from torch import nn

from fairsqueeze.measure.metrics import compute_metrics
from fairsqueeze.models import create_model
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import MethodContext
from fairsqueeze.methods.fairalm import MAX_ETA0, MAX_LR_ETA0, MIN_ETA0, ALMObjective, group_rates
from fairsqueeze.methods.toolbox.group_surrogates import false_alarm, miss
from fairsqueeze.datasets.base import Split, TaskData
from fairsqueeze.engine.training import Batch
from fairsqueeze.engine.trials import suggested_params


def planted_bias_task(n=2000, seed=0):
    """y depends on x0 and on the group: the best unconstrained rule misses many group-1 positives."""
    rng = np.random.default_rng(seed)

    def split(offset):
        s = (rng.random(n) < 0.5).astype(np.int64)
        x0 = rng.normal(size=n)
        x = np.stack([x0, s + 0.1 * rng.normal(size=n), rng.normal(size=n)], 1).astype(np.float32)
        y = (rng.random(n) < 1 / (1 + np.exp(-(2 * x0 + 2 * (1 - 2 * s))))).astype(np.int64)
        return Split(x, y, s, np.arange(offset, offset + n))

    train, val, test = split(0), split(n), split(2 * n)
    return TaskData("planted", train, val, test, 2, (3,), "y", "s", {0: "a", 1: "b"})


def context(task, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    return MethodContext(model, task.view(), torch.device("cpu"), seed, None, torch.Generator().manual_seed(seed))


def run(name, task, **params):
    common = {"epochs": 4, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "inner_steps": 2}
    outcome = METHODS.get(name).from_config({**common, **params}).apply(context(task))
    with torch.no_grad():
        pred = outcome.model(torch.as_tensor(task.test.x)).argmax(1).numpy()
    return outcome, compute_metrics(task.test.y, pred, task.test.s, num_classes=2), pred


def test_fairalm_reduces_deo_against_its_unconstrained_twin():
    task = planted_bias_task()
    _, plain, plain_pred = run("unconstrained", task)
    outcome, fair, fair_pred = run("fairalm", task, eta0=0.1)
    assert plain["deo"] > 0.25  # the planted bias shows without the constraint
    assert fair["deo"] < 0.5 * plain["deo"]
    # not by collapsing: both classes are still predicted and accuracy stays useful
    assert 0.2 < fair_pred.mean() < 0.8 and fair["accuracy"] > 0.7
    assert outcome.cost.steps == 4 * 2 * -(-2000 // 128) and outcome.cost.seconds > 0
    # the dual forward pass of Algorithm 2 is counted: inner_steps + 1 forwards per batch
    assert outcome.cost.passes == {"train_forward": pytest.approx(4 * 3), "train_backward": 4 * 2}


def test_fairalm_without_dual_step_is_its_twin():
    """η = 0 switches the mechanism off: λ stays 0 and training is the twin's, step for step."""
    task = planted_bias_task()
    plain, _, _ = run("unconstrained", task)
    off, _, _ = run("fairalm", task, eta0=0.0)
    for a, b in zip(plain.model.parameters(), off.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert off.info["multipliers"] == [[0.0]]


def test_reference_mode_and_l2_baseline_also_reduce_deo():
    task = planted_bias_task()
    _, plain, _ = run("unconstrained", task)
    _, ref, ref_pred = run("fairalm", task, dual="reference", eta0=2.0)
    _, l2, _ = run("l2_penalty", task, eta=5.0)
    assert ref["deo"] < 0.5 * plain["deo"] and 0.2 < ref_pred.mean() < 0.8
    assert l2["deo"] < plain["deo"]


def test_finetune_starts_from_the_dense_weights_and_scratch_does_not():
    task = planted_bias_task(n=200)

    def trained(ctx):  # stands in for a trained dense model
        for p in ctx.model.parameters():
            nn.init.constant_(p, 0.5)
        return ctx

    def first_weight(init):
        method = METHODS.get("unconstrained").from_config({"epochs": 1, "lr": 1e-9, "inner_steps": 1, "init": init})
        return method.apply(trained(context(task))).model[0].weight

    assert torch.allclose(first_weight("finetune"), torch.full((16, 3), 0.5))
    scratch = first_weight("scratch")
    assert (scratch - 0.5).abs().min() > 1e-4 and torch.equal(scratch, first_weight("scratch"))  # seeded


class TrainerStub:
    """What a dual step reads of the trainer: its model, and a cost counter."""

    def __init__(self, model):
        self.model = model

    def count(self, *args, **kwargs):
        pass


def test_surrogates_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0]
    assert torch.allclose(miss(logits, "ce")[0], -p.log())
    assert torch.allclose(false_alarm(logits, "ce")[0], -(1 - p).log())
    margins = torch.tensor([2.0, -2.0, -3.0])  # z_k − max of the others
    assert torch.allclose(miss(logits, "sigmoid_margin")[0], torch.sigmoid(-margins))
    assert torch.allclose(false_alarm(logits, "sigmoid_margin")[0], torch.sigmoid(margins))


def test_group_rates_by_hand_and_one_constraint_per_class():
    logits = torch.randn(8, 2)
    y = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0])
    s = torch.tensor([0, 0, 0, 1, 1, 1, 1, -1])  # -1: unknown group, in no cell
    mu, present = group_rates(logits, y, s, "deo", "ce", 2)
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    assert mu.shape == (2, 1) and present.tolist() == [True]
    assert torch.allclose(mu[:, 0], torch.stack([ce[[0, 1]].mean(), ce[[3, 5]].mean()]))
    fpr, _ = group_rates(logits, y, s, "fpr", "ce", 2)
    wrong = -torch.log_softmax(logits, 1)[:, 0]  # −log(1 − p_1) = −log p_0 for two classes
    assert torch.allclose(fpr[:, 0], torch.stack([wrong[[2]].mean(), wrong[[4, 6]].mean()]))
    err, _ = group_rates(logits, y, s, "error_rate", "ce", 2)
    assert torch.allclose(err[:, 0], torch.stack([ce[[0, 1, 2]].mean(), ce[[3, 4, 5, 6]].mean()]))



def test_multi_class_constraints_are_per_class_rates_by_hand():
    """Three classes: one DEO / FPR constraint per class k, each the mean over a cell by a
    plain loop over rows (miss of k on the rows with y = k, a false alarm of k on y != k)."""
    torch.manual_seed(0)
    logits = torch.randn(12, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1])
    s = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = torch.softmax(logits, 1).tolist()

    def margin(row, k):
        return logits[row, k].item() - max(logits[row, j].item() for j in range(3) if j != k)

    def cell(rule, g, k, in_cell):
        rows = [i for i in range(12) if s[i] == g and in_cell(i, k)]
        return sum(rule(i, k) for i in rows) / len(rows)

    deo, present = group_rates(logits, y, s, "deo", "ce", 3)
    fpr, _ = group_rates(logits, y, s, "fpr", "sigmoid_margin", 3)
    err, _ = group_rates(logits, y, s, "error_rate", "ce", 3)
    assert present.tolist() == [True, True, True]
    for g in (0, 1):
        for k in range(3):
            assert deo[g, k].item() == pytest.approx(cell(lambda i, k: -np.log(p[i][k]), g, k, lambda i, k: y[i] == k))
            sigmoid_alarm = lambda i, k: 1 / (1 + np.exp(-margin(i, k)))  # noqa: E731
            assert fpr[g, k].item() == pytest.approx(cell(sigmoid_alarm, g, k, lambda i, k: y[i] != k))
        rows = [i for i in range(12) if s[i] == g]
        assert err[g, 0].item() == pytest.approx(sum(-np.log(p[i][y[i]]) for i in rows) / len(rows))
    assert err.shape == (2, 1)


def test_the_dual_step_evaluates_in_eval_mode():
    """Algorithm 2's multiplier update reads the rates at the new weights: dropout off and
    batch-norm statistics left alone, so λ follows the eval-mode rates exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    x, s = torch.randn(16, 3), torch.arange(16) % 2
    batch = Batch(x, torch.ones(16, dtype=torch.long), s, np.arange(16))
    objective = ALMObjective("deo", "ce", 2, torch.device("cpu"), eta=2.0, eta_growth=1.0, dual="alg2")
    model.train()
    objective(model, batch)  # a primal step's forward pass, in train mode
    stats = model[1].running_mean.clone()

    objective.dual_step(TrainerStub(model))
    assert torch.equal(model[1].running_mean, stats) and model.training  # untouched, and back in train mode
    model.eval()
    with torch.no_grad():
        mu, _ = group_rates(model(x), batch.y, s, "deo", "ce", 2)
    assert objective.lam[0].item() == pytest.approx(2.0 * (mu[0, 0] - mu[1, 0]).item())


def test_after_step_runs_once_per_batch_under_inner_steps():
    """The trainer's hook runs after each batch's step; FairALM's dual step needs it once per
    batch, after all inner primal steps (Algorithm 2), not after each of them."""
    from fairsqueeze.methods.fairalm import InnerStepTrainer
    from fairsqueeze.spec.train import TrainConfig

    task = planted_bias_task(n=200)
    calls, steps = [], []
    trainer = InnerStepTrainer(nn.Linear(3, 2), task.view(), TrainConfig(epochs=2, batch_size=64), torch.device("cpu"),
                               0, inner_steps=3, after_step=lambda t: calls.append(t.cost.steps))
    trainer.fit()
    batches = 2 * -(-200 // 64)
    assert len(calls) == batches and calls == [3 * (i + 1) for i in range(batches)]


@pytest.mark.parametrize("dual", ["alg2", "reference"])
def test_a_batch_without_a_cell_gives_no_nan_and_leaves_its_multiplier(dual):
    model = nn.Linear(3, 2)
    x = torch.randn(6, 3)
    y = torch.tensor([1, 1, 0, 0, 0, 1])
    s = torch.tensor([0, 0, 0, 1, 1, 1])
    missing = Batch(x, torch.tensor([1, 1, 0, 0, 0, 0]), s, np.arange(6))  # no positive in group 1
    objective = ALMObjective("deo", "ce", 2, torch.device("cpu"), eta=1.0, eta_growth=1.0, dual=dual)
    objective.lam += 0.3
    loss = objective(model, missing)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.allclose(loss, nn.functional.cross_entropy(model(x), missing.y))  # the constraint is left out

    objective.dual_step(TrainerStub(model))
    assert torch.allclose(objective.lam, torch.full_like(objective.lam, 0.3)) and objective.absent == 1
    objective(model, Batch(x, y, s, np.arange(6)))
    objective.dual_step(TrainerStub(model))
    assert not torch.allclose(objective.lam, torch.full_like(objective.lam, 0.3))


@pytest.fixture(scope="module")
def adult_finetune():
    """The ``tuning_cpu`` suite's FairALM entry on adult: the task, a dense MLP trained with the
    suite's training settings (fewer epochs), and the entry's base params."""
    from fairsqueeze.datasets.base import build_task, data_root
    from fairsqueeze.spec.suite import resolve_suite_path

    if not (data_root() / "adult" / "adult.data").exists():
        pytest.skip(f"adult files not under {data_root()} (set FAIRSQUEEZE_DATA)")
    suite = yaml.safe_load(Path(resolve_suite_path("tuning_cpu")).read_text())
    base = next(m["params"] for m in suite["methods"] if isinstance(m, dict) and m["name"] == "fairalm")
    task = build_task("adult", sensitive="sex")
    torch.manual_seed(0)
    dense = create_model("mlp", task.input_shape, task.num_classes, hidden=[128, 64])
    train = {**suite["train"], "epochs": 3}
    METHODS.get("unconstrained").from_config({**train, "init": "finetune", "inner_steps": 1}).apply(
        MethodContext(dense, task.view(), torch.device("cpu"), 0, None, torch.Generator().manual_seed(0)))
    return task, dense, base


def nonfinite_rows(task, dense, params: dict, seed: int = 1) -> int:
    ctx = MethodContext(copy.deepcopy(dense), task.view(), torch.device("cpu"), seed, None,
                        torch.Generator().manual_seed(seed))
    model = METHODS.get("fairalm").from_config(params).apply(ctx).model
    with torch.no_grad():
        logits = model.eval()(task.prepare(task.val.x, False))
    return int((~torch.isfinite(logits)).any(1).sum())


def corners(max_lr_eta0: float):
    """FairALM's search space at the extremes of each of its dimensions (η₀'s ceiling depends on lr)."""
    for lr, top, inner in itertools.product((1e-3, 1e-1), (False, True), (1, 5)):
        yield {"lr": lr, "eta0": min(MAX_ETA0, max_lr_eta0 / lr) if top else MIN_ETA0, "inner_steps": inner}


def test_fairalm_search_space_extremes_train_without_nan_on_adult(adult_finetune):
    """Every corner of the tuned space trains to finite outputs; without the bound on lr·η₀ the
    old space's corner (lr 0.1, η₀ 100) diverges to NaN outputs within the first batches."""
    task, dense, base = adult_finetune
    for corner in corners(MAX_LR_ETA0):
        params = suggested_params("fairalm", base, optuna.trial.FixedTrial(corner))
        assert params["lr"] * params["eta0"] <= MAX_LR_ETA0 * (1 + 1e-9)
        assert nonfinite_rows(task, dense, params) == 0, corner
    unbounded = {**base, "max_lr_eta0": 10.0}
    (corner,) = [c for c in corners(10.0) if c["lr"] == 0.1 and c["eta0"] > 1 and c["inner_steps"] == 1]
    assert corner["eta0"] == MAX_ETA0
    assert nonfinite_rows(task, dense, suggested_params("fairalm", unbounded, optuna.trial.FixedTrial(corner))) == len(task.val)
