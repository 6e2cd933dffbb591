"""Costs of the pruning family, measured side by side (``make perf``); no timed assertions.

1. Whole-network exact diagonal GGN on ``vgg11_narrow``: ``network_curvature`` on BackPACK
   (``DiagGGNExact``, the default backend) against the autograd backend (the per-sample
   vmapped VJPs of ``diagonal_curvature`` with the whole model as head), same model and batch.
   Their results are checked equal.
2. One FairPrune step (``ggn_exact`` on both scoring sets, saliency, selection, masks) against
   one evaluation pass (a no-grad forward over the same rows).
3. Forward latency of the structured-pruned model (35 % and 55 % of the channels of every
   free conv/linear layer removed by Torch-Pruning) against the dense model's.

Inputs are synthetic (speed depends on shapes, not values): ``vgg11_narrow`` on 3x32x32
images, 10 classes, 64 scoring rows per group. The figures go to ``benchmark.extra_info``;
the README's performance table quotes them. torch runs on one thread (tests/conftest.py).
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from fairsqueeze.methods.toolbox.curvature import network_curvature, prunable_weights
from fairsqueeze.methods.toolbox.pruning import filter_layers, prune_filters, prune_weights
from fairsqueeze.methods.toolbox.scores import GroupSaliency, Magnitude
from fairsqueeze.models.base import create_model

SHAPE = (3, 32, 32)
CLASSES = 10
ROWS = 64  # per group
SEED = 0


def timed_rounds(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@pytest.fixture(scope="module")
def narrow_vgg():
    torch.manual_seed(SEED)
    return create_model("vgg11_narrow", SHAPE, CLASSES, dropout=0.0).eval()


@pytest.fixture(scope="module")
def scoring_data():
    g = torch.Generator().manual_seed(SEED)
    return {c: (torch.rand(ROWS, *SHAPE, generator=g), torch.randint(0, CLASSES, (ROWS,), generator=g)) for c in (0, 1)}


@pytest.mark.benchmark(group="pruning-curvature")
def test_whole_network_ggn_backpack_vs_autograd(benchmark, narrow_vgg, scoring_data):
    data = {0: scoring_data[0]}
    run_autograd = lambda: network_curvature(narrow_vgg, data, backend="autograd", batch_size=32)  # noqa: E731
    run_backpack = lambda: network_curvature(narrow_vgg, data, backend="backpack", batch_size=32)  # noqa: E731
    autograd = timed_rounds(run_autograd, 1)
    fast = benchmark.pedantic(run_backpack, rounds=3, warmup_rounds=1)
    autograd += timed_rounds(run_autograd, 1)
    slow = run_autograd()
    worst = 0.0
    for name in prunable_weights(narrow_vgg):
        a, b = fast[0].diag[name], slow[0].diag[name]
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))
        worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()))
    backpack_s = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(), "rows": ROWS, "classes": CLASSES,
        "backpack_s": backpack_s, "autograd_s": min(autograd), "autograd_over_backpack": min(autograd) / backpack_s,
        "max_rel_diff": worst,
    })


@pytest.mark.benchmark(group="pruning-step")
def test_one_fairprune_step_vs_one_evaluation_pass(benchmark, narrow_vgg, scoring_data):
    names = prunable_weights(narrow_vgg)
    x_all = torch.cat([scoring_data[0][0], scoring_data[1][0]])

    def evaluation_pass():
        with torch.inference_mode():
            for chunk in x_all.split(256):
                narrow_vgg(chunk)

    def setup():
        return (copy.deepcopy(narrow_vgg),), {}

    def fairprune_step(model):
        score = GroupSaliency(scoring_data, beta=1 / 3, batch_size=64, generator=SEED)
        return prune_weights(model, score, names, ratio=0.35)

    evaluation_pass()
    evaluation = timed_rounds(evaluation_pass, 5)
    benchmark.pedantic(fairprune_step, setup=setup, rounds=3, warmup_rounds=0)
    evaluation += timed_rounds(evaluation_pass, 5)
    step_s, eval_s = benchmark.stats.stats.min, min(evaluation)
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(), "rows": 2 * ROWS, "classes": CLASSES,
        "fairprune_step_s": step_s, "evaluation_pass_s": eval_s, "step_over_evaluation": step_s / eval_s,
    })


@pytest.mark.benchmark(group="structured-latency")
@pytest.mark.parametrize("ratio", [0.35, 0.55])
def test_structured_pruned_latency_vs_dense(benchmark, narrow_vgg, ratio):
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(SEED))
    pruned = copy.deepcopy(narrow_vgg)
    prune_filters(pruned, Magnitude(), filter_layers(pruned, x[:2]), ratio, x[:2])
    with torch.inference_mode():
        narrow_vgg(x)  # warm-up
        dense_s = timed_rounds(lambda: narrow_vgg(x), 15)
        benchmark.pedantic(pruned, args=(x,), rounds=30, warmup_rounds=1)  # 5-25 ms a round
        dense_s += timed_rounds(lambda: narrow_vgg(x), 15)
    params = {m: sum(p.numel() for p in m.parameters()) for m in (narrow_vgg, pruned)}
    pruned_s = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(), "batch": len(x), "ratio": ratio,
        "dense_min_s": min(dense_s), "pruned_min_s": pruned_s, "speedup_min": min(dense_s) / pruned_s,
        "params_dense": params[narrow_vgg], "params_pruned": params[pruned],
    })
