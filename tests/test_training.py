"""The shared trainer: hooks, samplers and cost accounting."""
import numpy as np
import torch
from torch import nn

from fairsqueeze.tasks import Split, TaskData
from fairsqueeze.training import Trainer, TrainConfig, cross_entropy


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
    assert trainer.cost.as_passes()["train_forward"] == 3.0


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
