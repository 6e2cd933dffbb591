"""The default suite as ``make bench`` runs it, side by side with ``--jobs 1`` (``make perf``;
figures in the README). Each side is the command a user types, in its own interpreter, with
an empty cache (every dense model trained) and a new database; one round each (a round is
minutes, so it is not a short timing). The serial run is shared by two tests.

- ``--jobs 2`` against ``--jobs 1`` on a 2-core machine, with identical stored metrics and
  predictions: the speedup at equal CPU cost (cores kept busy, two processes against one) at
  least 1.8x, and the two processes' CPU time at most 1.5x the serial run's (see
  ``cpu_time.py``). The wall-clock speedup is recorded beside them, not asserted: over our
  ``make perf`` runs it moved from 1.5x to 2.2x with the host while the engine kept both
  cores busy (1.95x to 1.99x). The engine's lock on each dense reference keeps the two
  processes from training one twice;
- ``make bench``'s budget: the ``--jobs 2`` run plus the report and the leaderboard within
  10 minutes, with the breakdown (dense training, methods, evaluation, outside them);
- the engine's overhead: wall time outside dense training, method work and evaluation
  under 10 % of the serial run;
- a resumed run with nothing left to do under 5 % of the first (fastest of 3 rounds), which
  must train nothing and decode no image.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from fairsqueeze.datasets.images import decoded_total
from fairsqueeze.engine.runner import Runner, plan_suite, resolve_device
from fairsqueeze.store.database import Store
from fairsqueeze.spec.suite import load_suite
from fairsqueeze.datasets.base import data_root
from fairsqueeze.engine.training import Trainer

from cpu_time import children_cpu_seconds

MAX_CPU_RATIO = 1.5  # the --jobs 2 run's CPU time over the serial run's
BENCH_BUDGET_S = 600  # make bench: run, report and leaderboard
RESUME_ROUNDS = 3


def cli(*args: str, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fairsqueeze.cli.main", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - started


def run_default(folder, jobs: int) -> dict:
    """``fairsqueeze run default --jobs N`` from empty caches: its wall and CPU seconds, the
    phases it reports (``--timings``), its database and cache."""
    db, cache = f"sqlite:///{folder}/jobs{jobs}.db", folder / f"cache{jobs}"
    env = {**os.environ, "FAIRSQUEEZE_CACHE": str(cache), "FAIRSQUEEZE_QUIET": "1"}
    cpu = children_cpu_seconds()
    wall = cli("run", "default", "--skip-missing-data", "--quiet", "--device", "cpu", "--jobs", str(jobs),
               "--db", db, "--timings", str(folder / f"timings{jobs}.json"), env=env)
    phases = json.loads((folder / f"timings{jobs}.json").read_text())
    return {"jobs": jobs, "wall_s": wall, "cpu_s": children_cpu_seconds() - cpu, "phases": phases, "db": db, "cache": cache,
            "env": env}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return run_default(tmp_path_factory.mktemp("serial"), 1)


def stored(db: str) -> tuple[pd.Series, pd.Series]:
    store = Store(db, read_only=True)
    metrics = store.metrics_frame().set_index(["run_key", "split", "name"])["value"].sort_index()
    keys = store.runs_frame()["key"]
    preds = pd.Series({(k, s): tuple(store.predictions(k, s)["y_pred"]) for k in keys for s in ("val", "test")})
    return metrics, preds.sort_index()


@pytest.mark.benchmark(group="suite")
def test_two_jobs_against_one_on_the_default_suite(benchmark, serial, tmp_path):
    parallel = benchmark.pedantic(lambda: run_default(tmp_path, 2), rounds=1, iterations=1)
    pages_s = (cli("report", "default", "--db", parallel["db"], "--out", str(tmp_path / "report"), env=parallel["env"])
               + cli("leaderboard", "--db", parallel["db"], "--out", str(tmp_path / "board"), env=parallel["env"]))
    speedup = serial["wall_s"] / parallel["wall_s"]
    # cores kept busy: CPU seconds per wall second of each side; their ratio is the speedup had
    # both sides' runs cost the same CPU time, which is the engine's part (the host's is cpu_ratio)
    busy = {side["jobs"]: side["cpu_s"] / side["wall_s"] for side in (serial, parallel)}
    equal_cpu_speedup = busy[2] / busy[1]
    cpu_ratio = parallel["cpu_s"] / serial["cpu_s"]
    bench_s = parallel["wall_s"] + pages_s
    benchmark.extra_info.update({
        "jobs1_s": serial["wall_s"], "jobs2_s": parallel["wall_s"], "speedup": speedup,
        "equal_cpu_speedup": equal_cpu_speedup, "busy_cores": busy, "cpu_ratio": cpu_ratio,
        "jobs1_cpu_s": serial["cpu_s"], "jobs2_cpu_s": parallel["cpu_s"], "load_avg_1min": os.getloadavg()[0],
        "runs": parallel["phases"]["runs"], "rounds": 1,
        "make_bench_s": bench_s, "report_and_leaderboard_s": pages_s, "jobs2_phases_s": parallel["phases"],
    })
    for one, two in zip(stored(serial["db"]), stored(parallel["db"])):
        pd.testing.assert_series_equal(one, two)
    assert equal_cpu_speedup >= 1.8, benchmark.extra_info
    assert cpu_ratio <= MAX_CPU_RATIO, benchmark.extra_info
    assert bench_s <= BENCH_BUDGET_S, benchmark.extra_info


@pytest.mark.benchmark(group="suite")
def test_default_suite_overhead_and_resume(benchmark, serial, monkeypatch):
    """The serial run's phases (its own ``--timings``) and a resume of it in this process, on
    its database and cache: no run left, so no training and no image decoded."""
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(serial["cache"]))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    suite = load_suite("default")
    runner = Runner(Store(serial["db"]), data_root(), resolve_device("cpu"), skip_missing_data=True)
    fits = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(1) or [])
    decoded = decoded_total()
    resumes = []
    benchmark.pedantic(lambda: resumes.append(runner.run(plan_suite(suite, data_root(), skip_missing_data=True))),
                       rounds=RESUME_ROUNDS, iterations=1)
    assert all(r.done == 0 and r.failed == [] for r in resumes) and fits == [] and decoded_total() == decoded

    first = serial["phases"]
    outside = serial["wall_s"] - first["dense_s"] - first["method_s"] - first["evaluation_s"]  # interpreter start included
    resume_s = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "runs": first["runs"], "first_run_s": serial["wall_s"], "phases_s": first, "outside_work_s": outside,
        "outside_work_share": outside / serial["wall_s"], "resume_s": resume_s, "resume_rounds": RESUME_ROUNDS,
        "resume_share": resume_s / serial["wall_s"],
    })
    assert outside / serial["wall_s"] < 0.10, benchmark.extra_info
    assert resume_s / serial["wall_s"] < 0.05, benchmark.extra_info
