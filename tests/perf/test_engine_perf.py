"""Engine performance, side by side in one run (``make perf``; figures in the README):
evaluation throughput of the engine's ``predict`` against a bare torch inference loop on the
same model and rows, 30 engine rounds interleaved with 31 bare ones, the median of the
per-round ratios compared (target: at least 0.9x). The default suite's overhead and resume
are measured in ``test_jobs_perf.py``, on the serial run it times anyway.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fairsqueeze.measure.evaluate import predict
from fairsqueeze.models.base import create_model
from fairsqueeze.datasets.base import build_task

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def rounds(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


EVALUATION_ROUNDS = 30  # engine rounds, each between two bare-loop rounds; about 45 ms each on an idle core


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_throughput_against_a_bare_torch_loop(benchmark):
    """The engine's ``predict`` and a bare loop take turns (bare, engine, bare, ...), so load
    from other processes hits both alike. Each engine round is compared with the mean of the
    bare rounds just before and after it, and the median of those ratios must reach 0.9 (one
    short timing of each side would be noise on a shared machine); the fastest rounds are
    reported beside it."""
    task = build_task("digits", None, size=32, channels=3)
    torch.manual_seed(0)
    model = create_model("vgg11_narrow", task.input_shape, task.num_classes).eval()
    split, device, batch = task.val, torch.device("cpu"), 512

    @torch.inference_mode()
    def bare():
        out = [model(torch.from_numpy(np.ascontiguousarray(split.x[i:i + batch])).float()).argmax(1)
               for i in range(0, len(split), batch)]
        return torch.cat(out).numpy()

    ours = lambda: predict(model, split, task.prepare, device, batch_size=batch)  # noqa: E731
    assert np.array_equal(ours(), bare())
    bare_times: list[float] = []
    # pytest-benchmark calls setup (untimed by it) before every round, the warm-up included
    benchmark.pedantic(ours, setup=lambda: bare_times.extend(rounds(bare, 1)), rounds=EVALUATION_ROUNDS,
                       warmup_rounds=1)
    bare_times = bare_times[1:] + rounds(bare, 1)  # without the warm-up's, with the one after the last round
    engine_times = benchmark.stats.stats.data
    assert len(engine_times) == EVALUATION_ROUNDS and len(bare_times) == EVALUATION_ROUNDS + 1
    paired = [(bare_times[i] + bare_times[i + 1]) / 2 / engine_times[i] for i in range(EVALUATION_ROUNDS)]
    ratio = {"paired_median": float(np.median(paired)), "min": min(bare_times) / min(engine_times)}
    rows_per_s = {"engine": len(split) / min(engine_times), "bare_torch": len(split) / min(bare_times)}
    benchmark.extra_info.update({"rows": len(split), "rounds": EVALUATION_ROUNDS, "rows_per_s": rows_per_s,
                                 "engine_over_bare": ratio})
    assert ratio["paired_median"] >= 0.9, benchmark.extra_info
