"""CPU inference latency of quantized models beside the dense model, in one run (``make perf``).

Side by side, no timed assertion: the ``benchmark`` fixture times the quantized model and the
dense model is timed in the same test with ``time.perf_counter``, half of its rounds before
and half after, and both are reported by their fastest round in ``benchmark.extra_info``.

- ``int8_ptq`` static (PyTorch's int8 conv/linear kernels, x86 backend) and dynamic (int8
  linear weights only) on the narrow VGG-11 at 32 px and on the paper's VGG-11 at 112 px;
- a FairQuantize model with 20 % of every layer's weights as power-of-two codes: its
  weights are decoded to float on every forward, so it is expected to be a little *slower*
  than the dense model (FairQuantize saves storage, not time).

Inputs and weights are random: latency depends on shapes, not values. One torch thread
(``tests/conftest.py``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_lowrank_perf import timed_rounds
from torch import nn

from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import MethodContext, Predictions
from fairsqueeze.methods.toolbox.factorize import replace_module
from fairsqueeze.methods.toolbox.quantize import coded_layer, fit_codec
from fairsqueeze.models.base import create_model
from fairsqueeze.datasets.base import Split, TaskData

SEED = 0
CASES = {  # model: (input shape, classes, batch)
    "vgg11_narrow": ((3, 32, 32), 10, 64),
    "vgg11_paper": ((3, 112, 112), 114, 8),
}


def random_task(shape, classes, rows=64) -> TaskData:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(rows, *shape)).astype(np.float32)
    split = Split(x, rng.integers(0, classes, rows), np.arange(rows) % 2, np.arange(rows))
    return TaskData("random", split, split, split, classes, shape, "y", "s", {0: "a", 1: "b"})


def context(model, task) -> MethodContext:
    v = task.val
    return MethodContext(model=model, task=task.view(), device=torch.device("cpu"), seed=SEED,
                         dense_val=Predictions(v.y, v.y, v.s), generator=torch.Generator().manual_seed(SEED))


def int8_model(dense, task, mode):
    method = METHODS.get("int8_ptq").from_config({"mode": mode, "calibration_rows": 64, "batch_size": 16})
    return method.apply(context(copy.deepcopy(dense), task)).model


def fairquantize_storage(dense):
    model = copy.deepcopy(dense)
    for path, module in [(p, m) for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
        n = module.weight.numel()
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=torch.Generator().manual_seed(SEED))[: round(0.2 * n)]] = True
        replace_module(model, path, coded_layer(module, mask.reshape(module.weight.shape), fit_codec("pow2", module.weight)))
    return model.eval()


@pytest.mark.benchmark(group="quantized-latency")
@pytest.mark.parametrize("variant", ["int8_static", "int8_dynamic", "fairquantize_20pct"])
@pytest.mark.parametrize("model_name", list(CASES))
def test_quantized_latency_beside_dense(benchmark, model_name, variant):
    shape, classes, batch = CASES[model_name]
    torch.manual_seed(SEED)
    dense = create_model(model_name, shape, classes, dropout=0.0).eval()
    task = random_task(shape, classes)
    if variant == "fairquantize_20pct":
        quantized = fairquantize_storage(dense)
    else:
        quantized = int8_model(dense, task, variant.removeprefix("int8_"))
    x = torch.from_numpy(task.train.x[:batch])
    rounds = 10 if model_name == "vgg11_narrow" else 4
    with torch.inference_mode():
        for _ in range(2):  # warm-up (allocator, packed kernels)
            dense(x)
            quantized(x)
        dense_times = timed_rounds(lambda: dense(x), rounds // 2)
        benchmark.pedantic(quantized, args=(x,), rounds=rounds, warmup_rounds=0)
        dense_times += timed_rounds(lambda: dense(x), rounds // 2)
        agreement = float((quantized(x).argmax(1) == dense(x).argmax(1)).float().mean())
    if benchmark.disabled:
        return
    dense_s, quantized_s = min(dense_times), benchmark.stats.stats.min
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(), "batch": batch, "input": "x".join(map(str, shape)),
        "dense_min_s": dense_s, "quantized_min_s": quantized_s, "speedup_min": dense_s / quantized_s,
        "top1_agreement_with_dense": agreement,
    })
    print(f"\n{model_name} {variant}: dense {dense_s * 1e3:.2f} ms, quantized {quantized_s * 1e3:.2f} ms, "
          f"speedup {dense_s / quantized_s:.2f}x, agreement {agreement:.2f}")
