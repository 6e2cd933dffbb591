"""The shared trainer: hooks, samplers and cost accounting."""
import numpy as np
import pytest
import torch
from torch import nn

from fairsqueeze.measure.convergence import majority_rate, underfit_flag
from fairsqueeze.core.errors import ConfigError
from fairsqueeze.datasets.base import Split, TaskData
from fairsqueeze.engine.training import EarlyStopping, Trainer, cross_entropy, train_reference
from fairsqueeze.spec.train import TrainConfig


def toy_task(n0=60, n1=20):
    rng = np.random.default_rng(0)
    n = n0 + n1
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    s = np.array([0] * n0 + [1] * n1)
    split = Split(x, y, s, np.arange(n))
    return TaskData("toy", split, split, split, 2, (4,), "y", "s", {0: "a", 1: "b"})


def test_balanced_batches_hold_every_group_equally():
    task = toy_task()
    trainer = Trainer(nn.Linear(4, 2), task, TrainConfig(epochs=1, batch_size=8), torch.device("cpu"), 0,
                      sampler="balanced")
    batches = list(trainer.epoch_rows(task.train))
    assert len(batches) == 60 // 4  # the largest group sets the epoch length
    for rows in batches:
        assert (task.train.s[rows] == 0).sum() == 4 and (task.train.s[rows] == 1).sum() == 4
    # every row of the large group is seen exactly once per epoch
    seen = np.concatenate([rows[task.train.s[rows] == 0] for rows in batches])
    assert sorted(seen.tolist()) == list(range(60))


def test_hooks_run_and_cost_is_counted():
    task = toy_task()
    calls = {"after": 0, "epochs": []}
    model = nn.Linear(4, 2)

    def after(trainer):
        calls["after"] += 1
        with torch.no_grad():
            trainer.model.weight[:, 3] = 0  # a frozen (masked) column stays zero

    trainer = Trainer(model, task, TrainConfig(epochs=3, batch_size=16, lr=0.1), torch.device("cpu"), 0,
                      after_step=after, on_epoch_end=lambda t, e: calls["epochs"].append(e))
    history = trainer.fit()
    steps = 3 * -(-80 // 16)
    assert calls["after"] == steps and calls["epochs"] == [0, 1, 2] and len(history) == 3
    assert torch.all(model.weight[:, 3] == 0)
    assert trainer.cost.steps == steps
    assert trainer.cost.as_cost().passes == {"train_forward": 3.0, "train_backward": 3.0}
    assert trainer.cost.as_cost().steps == steps


def test_loss_hook_changes_training_and_its_absence_does_not():
    task = toy_task()

    def run(loss):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        Trainer(model, task, TrainConfig(epochs=2, batch_size=16, lr=0.1), torch.device("cpu"), 0, loss=loss).fit()
        return model.weight.detach().clone()

    def penalized(model, batch):
        return cross_entropy(model, batch) + 10.0 * model.weight.square().sum()

    plain, again, pen = run(cross_entropy), run(cross_entropy), run(penalized)
    assert torch.equal(plain, again)
    assert pen.norm() < 0.5 * plain.norm()


def test_augment_switch_chooses_the_transforms():
    seen = []

    def transform(x, train):
        seen.append(train)
        return torch.as_tensor(x).float()

    task = toy_task()
    task.transform = transform
    for augment in (True, False):
        seen.clear()
        Trainer(nn.Linear(4, 2), task, TrainConfig(epochs=1, batch_size=40), torch.device("cpu"), 0,
                augment=augment).fit()
        assert seen and set(seen) == {augment}


def test_a_split_that_withholds_a_column_gives_batches_without_it():
    class LabelsOnly:  # one side of a privacy split: reading the groups raises
        def __init__(self, split):
            self.x, self.y, self.index = split.x, split.y, split.index

        def __len__(self):
            return len(self.y)

        @property
        def s(self):
            raise AttributeError("withheld")

    task = toy_task()
    seen = []

    def loss(model, batch):
        seen.append((batch.s, len(batch)))
        return cross_entropy(model, batch)

    trainer = Trainer(nn.Linear(4, 2), task, TrainConfig(epochs=1, batch_size=32), torch.device("cpu"), 0, loss=loss)
    trainer.fit(LabelsOnly(task.train))
    assert [n for _, n in seen] == [32, 32, 16] and all(s is None for s, _ in seen)
    trainer.fit(task.train)  # a full split still hands over its groups
    assert seen[-1][0] is not None and len(seen[-1][0]) == seen[-1][1]


# -- early stopping and the underfit flag ------------------------------------------------------

def scripted_bias_run(biases, patience):
    """A model whose output is its bias alone (x = 0), set to ``biases[epoch]`` after every step:
    the validation loss of epoch e is softplus(-b_e) on labels that are all 1."""
    n = 16
    split = Split(np.zeros((n, 1), np.float32), np.ones(n, np.int64), np.array([0, 1] * (n // 2)), np.arange(n))
    task = TaskData("const", split, split, split, 2, (1,), "y", "s", {0: "a", 1: "b"})
    model = nn.Linear(1, 2)

    def script(trainer):
        with torch.no_grad():
            trainer.model.bias.copy_(torch.tensor([0.0, biases[trainer.cost.epochs]]))

    monitor = EarlyStopping(task.val, patience=patience)
    Trainer(model, task, TrainConfig(epochs=len(biases), batch_size=n, patience=patience), torch.device("cpu"), 0,
            after_step=script, on_epoch_end=monitor).fit()
    return model, monitor


def test_early_stopping_restores_the_best_validation_epoch():
    biases = [1.0, 3.0, 2.0, 0.5, 0.1]
    model, monitor = scripted_bias_run(biases, patience=2)
    softplus = [float(np.log1p(np.exp(-b))) for b in biases]
    # best at epoch 2 (b = 3); epochs 3 and 4 do not improve, so training stops after epoch 4
    assert monitor.val_loss == pytest.approx(softplus[:4], abs=1e-6)
    assert monitor.best_epoch == 1 and monitor.stopped_early
    monitor.restore(model)
    assert model.bias[1].item() == 3.0
    assert monitor.record([0.0] * 4)["best_epoch"] == 2 and monitor.record([])["epochs_used"] == 4


def test_without_patience_every_epoch_runs_and_nothing_stops():
    biases = [1.0, 3.0, 2.0, 0.5, 0.1]
    model, monitor = scripted_bias_run(biases, patience=0)
    assert len(monitor.val_loss) == 5 and not monitor.stopped_early
    assert model.bias[1].item() == pytest.approx(0.1)  # the last epoch's weights


def noisy_task(n=400, seed=0):
    rng = np.random.default_rng(seed)
    def split(m):
        x = rng.normal(size=(m, 4)).astype(np.float32)
        y = ((x[:, 0] > 0) ^ (rng.random(m) < 0.15)).astype(np.int64)  # 15 % label noise: the loss plateaus
        return Split(x, y, (x[:, 1] > 0).astype(np.int64), np.arange(m))
    return TaskData("noisy", split(n), split(n), split(n), 2, (4,), "y", "s", {0: "a", 1: "b"})


def test_a_reference_stopped_after_one_epoch_is_underfit_and_a_converged_one_is_not():
    task = noisy_task()
    majority = majority_rate(task.train.y, task.val.y)

    def train(epochs, lr):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        record = train_reference(model, task, TrainConfig(epochs=epochs, batch_size=32, lr=lr, patience=3, min_delta=1e-3),
                                 torch.device("cpu"), 0)
        return record, underfit_flag(record, majority)

    record, flag = train(1, 0.05)
    assert record["epochs_used"] == 1 and flag["still_improving"] and flag["underfit"]
    record, flag = train(200, 0.05)
    assert record["stopped_early"] and record["epochs_used"] < 200
    assert not flag["underfit"], flag["reasons"]
    assert flag["val_accuracy"] == pytest.approx(record["val_accuracy"][record["best_epoch"] - 1])


def test_a_reference_at_the_majority_rate_is_underfit():
    record = {"epochs_used": 10, "best_epoch": 4, "stopped_early": True, "restored": True, "val_accuracy": [0.53] * 10}
    flag = underfit_flag(record, majority_rate(np.array([0, 0, 1]), np.array([0] * 53 + [1] * 47)))
    assert flag["majority_rate"] == pytest.approx(0.53) and flag["underfit"] and not flag["still_improving"]
    flag = underfit_flag({**record, "val_accuracy": [0.60] * 10}, 0.53)  # 7 points above: learnt something
    assert not flag["underfit"]


def test_a_dense_reference_refuses_zero_epochs():
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0).check_reference()
    assert TrainConfig(epochs=0).epochs == 0  # a method may still retrain for no epoch


def test_a_suite_with_zero_dense_epochs_is_refused_in_one_line():
    from fairsqueeze.core.errors import FairsqueezeError
    from fairsqueeze.spec.suite import parse_suite

    suite = {"name": "s", "seeds": [0], "train": {"epochs": 0}, "tasks": ["digits"], "models": ["mlp"],
             "methods": ["dense"]}
    with pytest.raises(FairsqueezeError, match="epochs must be >= 1") as err:
        parse_suite(suite)
    assert "\n" not in str(err.value)
    suite["train"] = {"epochs": 5, "patience": -1}
    with pytest.raises(FairsqueezeError, match="patience"):
        parse_suite(suite)


def test_the_stopping_rule_is_part_of_the_training_hash():
    from fairsqueeze.core.hashing import config_hash

    fixed = TrainConfig(epochs=10)
    assert "patience" not in fixed.identity()  # a fixed protocol keeps the hash it always had
    assert config_hash(TrainConfig(epochs=10, min_delta=0.5).identity()) == config_hash(fixed.identity())
    stopped = TrainConfig(epochs=10, patience=3)
    assert config_hash(stopped.identity()) != config_hash(fixed.identity())
    assert config_hash(TrainConfig(epochs=10, patience=3, min_delta=0.01).identity()) != config_hash(stopped.identity())
