"""Tuning throughput with workers on one PostgreSQL database, and the per-trial overhead (``make perf``).

Targets (the issue's):

1. Two workers on one PostgreSQL database do the same CPU suite at >= 1.7x the throughput of
   one worker (torch on one thread per worker, 2 cores): the median over 3 rounds, each
   measuring one worker and then two, so that each ratio pairs sides a minute apart (a
   single round moved between 1.67x and 2.19x with the host). The suite: the CPU tuning suite's
   setting on adult (the low-rank family, truncated SVD, SLR-w, SLR-a and FairLRF, tuned with
   TPE on the MLP, 2 seeds), with fewer dense epochs; the dense references are trained
   beforehand (a warm checkpoint cache), so the timings cover trials and selected runs only.
2. The per-trial overhead outside the method and the evaluation (claiming, Optuna's ask/tell
   and heartbeats, sampling, storing the trial, slot bookkeeping, selection) is at most twice
   Optuna's own cost per trial for the same studies (same storage, samplers, search spaces
   and trial records, a no-op objective), over the bundled CPU tuning suite (every family)
   on adult, one seed: the median over 3 paired rounds. Its share of the method + evaluation time is recorded too: the cheap
   methods' trials take 10-100 ms, less than Optuna's own ask and tell, so a share of a few
   percent is out of reach for them whatever the engine does.

Both are skipped when the adult files are absent.

Throughput counts finished items (trials and runs) per second over the span from the first
item's start to the last one's end, both read from the database (Optuna's trial start and
completion times, the runs' start and finish times): interpreter start-up and planning are
left out for both sides alike. The machine may be shared: the measured numbers are recorded
in ``extra_info`` (see ``--benchmark-json``) whatever the outcome.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from fairsqueeze.engine.runner import Runner, plan_suite, resolve_device
from fairsqueeze.store.database import Store
from fairsqueeze.spec.suite import resolve_suite_path
from fairsqueeze.datasets.base import data_root
from fairsqueeze.engine.worker import Worker

from cpu_time import children_cpu_seconds

MIN_SPEEDUP = 1.7
PAIRED_ROUNDS = 3
MAX_OVERHEAD_OVER_OPTUNA = 2.0  # per trial: the engine's overhead / Optuna's own cost
TRIALS = 6  # as in the tuning_cpu suite


def suite_file(tmp_path: Path, name: str = "perf") -> Path:
    suite = {
        "name": name,
        "seeds": [0, 1, 2, 3],
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.02, "optimizer": "sgd", "momentum": 0.9},
        "tasks": [{"name": "adult", "options": {"sensitive": "sex"}}],
        "models": [{"name": "mlp", "options": {"hidden": [128, 64]}}],
        "tuning": {"trials": TRIALS, "sampler": {"name": "tpe", "seed": 0, "options": {"n_startup_trials": 3}},
                   "policies": ["best_utility", "utopia"]},
        "methods": [
            {"name": m, "params": {"layer": "fc2", "k": 32}, "tune": True}
            for m in ("truncated_svd", "slr_w", "slr_a", "fairlrf")
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def warm_cache(path: Path, url: str) -> None:
    """Train the dense references once, so both timed sides start from the same warm cache."""
    from fairsqueeze.spec.suite import load_suite

    from fairsqueeze.engine.execute import prepare_reference

    plan = plan_suite(load_suite(str(path)), data_root())
    for spec in plan.studies:
        prepare_reference(spec, plan.tasks[spec.task.key], resolve_device("cpu"))


def run_workers(path: Path, url: str, n: int) -> float:
    """Run ``n`` workers on ``url`` to the end; their CPU seconds."""
    cpu = children_cpu_seconds()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRSQUEEZE_QUIET": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from fairsqueeze.cli.main import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "worker", str(path), "--db", url, "--device", "cpu", "--quiet"]
    procs = [subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err[-2000:]
    return children_cpu_seconds() - cpu


def throughput(url: str) -> tuple[int, float]:
    """(items, seconds from the first item's start to the last one's end)."""
    starts, ends = [], []
    for summary in optuna.get_all_study_summaries(storage=url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).trials:
            starts.append(t.datetime_start.timestamp())
            ends.append(t.datetime_complete.timestamp())
    runs = Store(url).runs_frame()
    starts += runs["started_at"].tolist()
    ends += runs["finished_at"].tolist()
    return len(starts), max(ends) - min(starts)


@pytest.fixture
def perf_env(tmp_path, monkeypatch):
    if not (data_root() / "adult" / "adult.data").exists():
        pytest.skip(f"adult files not under {data_root()} (set FAIRSQUEEZE_DATA)")
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    return tmp_path


def test_two_workers_on_postgresql_vs_one(benchmark, postgres_server, perf_env):
    """One worker, then two, on fresh databases, PAIRED_ROUNDS times in turn: each round's
    throughput ratio pairs two sides measured a minute apart, so a slow spell of the host
    moves one ratio, and the median of the rounds is asserted."""
    path = suite_file(perf_env)
    warm_cache(path, postgres_server.new_database())
    rounds = []

    def measure():
        for _ in range(PAIRED_ROUNDS):
            side = {}
            for n in (1, 2):
                url = postgres_server.new_database()
                cpu = run_workers(path, url, n)
                side[n] = (*throughput(url), cpu)
            assert side[1][0] == side[2][0]  # the same items
            rounds.append(side)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    ratios = [r[1][1] / r[2][1] for r in rounds]  # the same items: the throughput ratio is the span ratio
    speedup = float(np.median(ratios))
    benchmark.extra_info.update({
        "items": rounds[0][1][0], "one_worker_s": [r[1][1] for r in rounds], "two_workers_s": [r[2][1] for r in rounds],
        "round_speedups": ratios, "speedup": speedup, "paired_rounds": PAIRED_ROUNDS,
        "cpu_s": {"one": [r[1][2] for r in rounds], "two": [r[2][2] for r in rounds]},  # start-up included
        "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]})
    print(f"\n{rounds[0][1][0]} items: round speedups {', '.join(f'{x:.2f}' for x in ratios)}, median {speedup:.2f}x"
          f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    assert speedup >= MIN_SPEEDUP, benchmark.extra_info


def optuna_alone(plan, url: str) -> dict[str, float]:
    """The reference: Optuna's own cost for the same studies. Same storage (the store's), samplers,
    search spaces and trial records (the constraint and the result attribute), but the objective
    does no work. Returns seconds per method label."""
    from fairsqueeze.engine.execute import TrialResult
    from fairsqueeze.engine.trials import record, suggested_params

    storage = Store(url).optuna_storage()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as the worker sets it
    seconds: dict[str, float] = {}
    for i, spec in enumerate(plan.studies):
        tune = spec.method.tune

        def objective(trial):
            params = suggested_params(spec.method.name, spec.method.params, trial)
            result = TrialResult([0.5, 0.1], {"accuracy": 0.8, "f1_avg": 0.5, "eodd": 0.1}, 1.0, [],
                                 None if tune.accuracy_within is None else -0.01, {"apply": 0.0})
            record(trial, result, params, 0)
            return result.values

        started = time.perf_counter()
        study = optuna.create_study(storage=storage, study_name=f"alone-{i}", directions=tune.objectives.directions(),
                                    sampler=tune.sampler.build())
        study.optimize(objective, n_trials=tune.trials)
        label = spec.method.label
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started
    return seconds


def cpu_tuning_suite_on_adult(tmp_path: Path) -> Path:
    """The bundled ``tuning_cpu`` suite as it is (every family, its budget, sampler, objectives,
    constraint and policies) on its adult task and one seed."""
    suite = yaml.safe_load(Path(resolve_suite_path("tuning_cpu")).read_text())
    suite.update(name="perf_overhead", seeds=suite["seeds"][:1],
                 tasks=[t for t in suite["tasks"] if t["name"] == "adult"])
    path = tmp_path / "perf_overhead.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def worker_round(plan, url: str, computer) -> dict[str, dict[str, float]]:
    """One worker doing the plan on a fresh database, with the dense references of ``computer``
    (loaded before the clock starts). Per method label: trials, their method + evaluation
    seconds ("work") and the seconds of the study visits around them ("visits")."""
    worker = Worker(Runner(Store(url), data_root(), resolve_device("cpu")))
    worker.runner.computer = computer
    visits: dict[str, float] = {}
    original = Worker._do_study

    def timed(self, suite, name, *args):
        started = time.perf_counter()
        result = original(self, suite, name, *args)
        visits[name] = visits.get(name, 0.0) + time.perf_counter() - started
        return result

    Worker._do_study = timed
    try:
        worker.run(plan)
    finally:
        Worker._do_study = original
    rows: dict[str, dict[str, float]] = {}
    for summary in optuna.get_all_study_summaries(storage=url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        row = rows.setdefault(study.user_attrs["label"], {"trials": 0, "work": 0.0, "visits": 0.0})
        row["visits"] += visits[summary.study_name]
        for t in study.trials:
            if "result" in t.user_attrs:
                seconds = t.user_attrs["result"]["seconds"]
                row["work"] += seconds["apply"] + seconds["evaluate"]
            else:  # a failed trial records no timing: its whole span counts as work
                row["work"] += (t.datetime_complete - t.datetime_start).total_seconds()
            row["trials"] += 1
    return rows


def test_per_trial_overhead_outside_method_and_evaluation(benchmark, postgres_server, perf_env):
    """The overhead of every study visit (lease, Optuna's ask, suggest and tell, slot bookkeeping,
    sampling, storing the trial, selection) beyond the trials' own method + evaluation time,
    per trial, against Optuna's own cost per trial for the same studies (no-op objective),
    measured side by side in PAIRED_ROUNDS rounds: each round runs the reference, the worker
    and the reference again (averaged), each on a fresh database, and gives one ratio; the
    median of the rounds is asserted, so a slow spell of the host moves one round, not the
    verdict (a single round moved between 1.4x and 2.1x with the host). Recorded per method
    family too, with the overhead's share of the method + evaluation time."""
    import torch

    from fairsqueeze.spec.suite import load_suite
    from fairsqueeze.engine.execute import Computer

    torch.set_num_threads(1)
    path = cpu_tuning_suite_on_adult(perf_env)
    plan = plan_suite(load_suite(str(path)), data_root())
    computer = Computer(resolve_device("cpu"), data_root(), plan.tasks)
    for spec in plan.studies:  # dense references loaded (and trained) before the clock starts
        computer.reference(spec)
    rounds = []

    def measure():
        for _ in range(PAIRED_ROUNDS):
            before = optuna_alone(plan, postgres_server.new_database())
            rows = worker_round(plan, postgres_server.new_database(), computer)
            after = optuna_alone(plan, postgres_server.new_database())
            rounds.append((rows, {label: (before[label] + after[label]) / 2 for label in before}))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    ratios, per_round = [], []
    for rows, alone in rounds:
        n = sum(r["trials"] for r in rows.values())
        work = sum(r["work"] for r in rows.values())
        overhead_ms = 1000 * (sum(r["visits"] for r in rows.values()) - work) / n
        alone_ms = 1000 * sum(alone.values()) / n
        ratios.append(overhead_ms / alone_ms)
        per_round.append({"trials": n, "method_and_evaluation_s": work, "overhead_ms_per_trial": overhead_ms,
                          "optuna_alone_ms_per_trial": alone_ms, "overhead": (overhead_ms * n / 1000) / work})
    ratio = float(np.median(ratios))
    median = int(np.argsort(ratios)[len(ratios) // 2])  # the median round, shown in detail
    middle, shown = rounds[median], per_round[median]
    lines = []
    for label, row in middle[0].items():
        n = row["trials"]
        row.update(work_ms_per_trial=1000 * row["work"] / n, overhead_ms_per_trial=1000 * (row["visits"] - row["work"]) / n,
                   optuna_alone_ms_per_trial=1000 * middle[1][label] / n, overhead=(row["visits"] - row["work"]) / row["work"])
        lines.append(f"  {label:<16} {row['work_ms_per_trial']:8.0f} ms {row['overhead_ms_per_trial']:6.0f} ms"
                     f" {100 * row['overhead']:7.1f} % {row['optuna_alone_ms_per_trial']:6.0f} ms")
    benchmark.extra_info.update({**shown, "overhead_over_optuna": ratio, "round_ratios": ratios,
                                 "rounds": per_round, "paired_rounds": PAIRED_ROUNDS, "per_method": middle[0],
                                 "load_avg_1min": os.getloadavg()[0]})
    print(f"\n{shown['trials']} trials a round; overhead over Optuna alone per round"
          f" {', '.join(f'{x:.2f}' for x in ratios)}, median {ratio:.2f}x; the median round:"
          f" {shown['overhead_ms_per_trial']:.0f} ms per trial against {shown['optuna_alone_ms_per_trial']:.0f} ms,"
          f" {100 * shown['overhead']:.1f} % of method + evaluation time; per trial:\n"
          f"  {'method':<16} {'work':>11} {'overhead':>9} {'share':>9} {'Optuna alone':>9}\n" + "\n".join(lines))
    assert ratio <= MAX_OVERHEAD_OVER_OPTUNA, benchmark.extra_info
