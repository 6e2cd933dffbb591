"""Engine performance, side by side in one run (``make perf``; figures in the README):

- evaluation throughput of the engine's ``predict`` against a bare torch inference loop on
  the same model and rows, 30 engine rounds interleaved with 31 bare ones, the median of the
  per-round ratios compared (target: at least 0.9x);
- the default suite: wall time outside dense training, method work and evaluation
  (target: under 10 % of the first run; one round, about a minute), and a resumed run with
  nothing left to do against the first run (target: under 5 %; fastest of 3 rounds), which
  must train nothing and decode no image.
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


RESUME_ROUNDS = 3  # the first run is one round of about a minute; the resume takes a fraction of a second


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
    resumes = []

    def resume():
        resumes.append(runner.run(plan_suite(suite, data_root(), skip_missing_data=True)))

    resume_s = fastest(rounds(resume, RESUME_ROUNDS))  # a fraction of a second: the fastest of a few
    assert all(r.done == 0 for r in resumes) and fits == [] and decoded_total() == decoded  # no work

    outside = (first_s - report.seconds["total"]) + report.overhead  # planning/loading + bookkeeping
    benchmark.extra_info.update({
        "runs": report.done,
        "first_run_s": first_s,
        "phases_s": report.seconds,
        "outside_work_s": outside,
        "outside_work_share": outside / first_s,
        "resume_s": resume_s,
        "resume_rounds": RESUME_ROUNDS,
        "resume_share": resume_s / first_s,
        "missing_tasks": report.missing_tasks,
    })
    assert outside / first_s < 0.10, benchmark.extra_info
    assert resume_s / first_s < 0.05, benchmark.extra_info
