"""Engine performance, side by side in one run (``make perf``; figures in the README):

- evaluation throughput of the engine's ``predict`` against a bare torch inference loop on
  the same model and rows (target: at least 0.9x);
- the default suite: wall time outside dense training, method work and evaluation
  (target: under 10 % of the first run), and a resumed run with nothing left to do against
  the first run (target: under 5 %), which must train nothing and decode no image.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fairsqueeze.datasets.images import decoded_total
from fairsqueeze.evaluate import predict
from fairsqueeze.models import create_model
from fairsqueeze.runner import Runner, plan_suite, resolve_device
from fairsqueeze.store import Store
from fairsqueeze.suite import load_suite
from fairsqueeze.tasks import build_task, data_root
from fairsqueeze.training import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fastest(times: list[float]) -> float:
    return min(times)


def rounds(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_throughput_against_a_bare_torch_loop(benchmark):
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
    bare_times = rounds(bare, 5)
    benchmark.pedantic(ours, rounds=5, warmup_rounds=1)
    bare_times += rounds(bare, 5)
    ours_s, bare_s = benchmark.stats.stats.min, fastest(bare_times)
    rows_per_s = {"engine": len(split) / ours_s, "bare_torch": len(split) / bare_s}
    benchmark.extra_info.update({"rows": len(split), "rows_per_s": rows_per_s, "engine_over_bare": bare_s / ours_s})
    assert bare_s / ours_s >= 0.9, f"engine {rows_per_s['engine']:.0f} rows/s, bare loop {rows_per_s['bare_torch']:.0f}"


@pytest.mark.benchmark(group="suite")
def test_default_suite_overhead_and_resume(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    suite = load_suite("default")
    store = Store(f"sqlite:///{tmp_path}/perf.db")
    runner = Runner(store, data_root(), resolve_device("cpu"), skip_missing_data=True)

    def first_run():
        started = time.perf_counter()
        plan = plan_suite(suite, data_root(), skip_missing_data=True)
        report = runner.run(plan)
        return report, time.perf_counter() - started

    report, first_s = benchmark.pedantic(first_run, rounds=1, iterations=1)
    assert report.failed == [] and report.done > 0

    fits = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(1) or [])
    decoded = decoded_total()
    started = time.perf_counter()
    resumed = runner.run(plan_suite(suite, data_root(), skip_missing_data=True))
    resume_s = time.perf_counter() - started
    assert resumed.done == 0 and fits == [] and decoded_total() == decoded  # a cache hit does no work

    outside = (first_s - report.seconds["total"]) + report.overhead  # planning/loading + bookkeeping
    benchmark.extra_info.update({
        "runs": report.done,
        "first_run_s": first_s,
        "phases_s": report.seconds,
        "outside_work_s": outside,
        "outside_work_share": outside / first_s,
        "resume_s": resume_s,
        "resume_share": resume_s / first_s,
        "missing_tasks": report.missing_tasks,
    })
    assert outside / first_s < 0.10, benchmark.extra_info
    assert resume_s / first_s < 0.05, benchmark.extra_info
