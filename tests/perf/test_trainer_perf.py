"""The shared trainer's step throughput against a bare PyTorch loop (``make perf``).

Both sides train the same model from the same weights on the same batches (the trainer's
shuffle sampler draws the row order; the bare loop draws it the same way) with the same SGD
settings, and must end with identical weights and epoch losses. The MLP on tabular-sized batches is where the
trainer's per-step bookkeeping (batch assembly, cost counts, the loss read back) weighs most
against the arithmetic; the narrow VGG is the image model of the suites. Rounds alternate
(bare, trainer, bare, ...); each trainer round is compared with the mean of the bare rounds
around it and the median ratio must reach 0.9.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from fairsqueeze.datasets.base import build_task
from fairsqueeze.engine.training import Trainer
from fairsqueeze.models.base import create_model
from fairsqueeze.spec.train import TrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

SEED = 0
CASES = {  # model -> (task options, model options, batch size, epochs per round, rounds)
    "mlp": ({"target": "parity"}, {"hidden": [128, 64]}, 64, 4, 30),
    "vgg11_narrow": ({"target": "parity", "size": 32, "channels": 3}, {}, 128, 1, 8),
}


def bare_loop(model: nn.Module, task, cfg: TrainConfig) -> tuple[nn.Module, list[float]]:
    """Plain PyTorch: the same row order, batches, loss and optimizer as the trainer's, and,
    like any training loop, each epoch's mean loss."""
    rng = np.random.default_rng(SEED)
    split = task.train
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    torch.manual_seed(SEED)
    model.train()
    history = []
    for _ in range(cfg.epochs):
        total = 0.0
        order = rng.permutation(len(split))
        for start in range(0, len(order), cfg.batch_size):
            rows = np.sort(order[start:start + cfg.batch_size])
            x = torch.from_numpy(np.ascontiguousarray(split.x[rows])).float()
            loss = nn.functional.cross_entropy(model(x), torch.from_numpy(split.y[rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        history.append(total / len(split))
    return model, history


@pytest.mark.benchmark(group="training")
@pytest.mark.parametrize("name", list(CASES))
def test_trainer_step_throughput_against_a_bare_torch_loop(benchmark, name):
    task_options, model_options, batch_size, epochs, n_rounds = CASES[name]
    task = build_task("digits", None, **task_options)
    torch.manual_seed(SEED)
    initial = create_model(name, task.input_shape, task.num_classes, **model_options)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, momentum=0.9)
    device = torch.device("cpu")

    def trainer():
        model = copy.deepcopy(initial)
        return model, Trainer(model, task, cfg, device, SEED).fit()

    def bare():
        return bare_loop(copy.deepcopy(initial), task, cfg)

    (ours, our_losses), (reference, bare_losses) = trainer(), bare()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in reference.state_dict().items()), \
        "the two loops must compute the same training"
    assert our_losses == pytest.approx(bare_losses, rel=1e-12)

    bare_times: list[float] = []

    def time_bare():
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)

    benchmark.pedantic(trainer, setup=time_bare, rounds=n_rounds, warmup_rounds=1)
    time_bare()
    bare_times = bare_times[1:]  # without the warm-up's
    trainer_times = benchmark.stats.stats.data
    paired = [(bare_times[i] + bare_times[i + 1]) / 2 / trainer_times[i] for i in range(n_rounds)]
    steps = epochs * -(-len(task.train) // batch_size)
    ratio = {"paired_median": float(np.median(paired)), "min": min(bare_times) / min(trainer_times)}
    benchmark.extra_info.update({"model": name, "steps_per_round": steps, "rounds": n_rounds,
                                 "steps_per_s": {"trainer": steps / min(trainer_times), "bare_torch": steps / min(bare_times)},
                                 "trainer_over_bare": ratio})
    assert ratio["paired_median"] >= 0.9, benchmark.extra_info
