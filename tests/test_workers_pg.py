"""Several workers on one suite through a real PostgreSQL database (see tests/pg.py)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from fairsqueeze.store.database import Store
from fairsqueeze.reports.tuning_report import selections_frame

TESTS = Path(__file__).parent
WORKER = "import sys, sleepy_plugin; from fairsqueeze.cli.main import main; sys.exit(main(sys.argv[1:]))"


def write_suite(tmp_path, methods, seeds=(0,), trials=3, name="pg"):
    suite = {
        "name": name,
        "seeds": list(seeds),
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "tasks": [{"name": "digits", "options": {"target": "parity"}}],
        "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
        "tuning": {"trials": trials, "sampler": {"name": "tpe", "seed": 5}, "policies": ["best_utility", "utopia"]},
        "methods": methods,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def start_worker(suite, url, cache, sleep_s=0.0, marker=None):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FAIRSQUEEZE_CACHE": str(cache), "FAIRSQUEEZE_QUIET": "1",
           "SLEEPY_S": str(sleep_s), "OMP_NUM_THREADS": "1"}
    if marker:
        env["SLEEPY_MARKER"] = str(marker)
    args = [sys.executable, "-c", WORKER, "worker", str(suite), "--db", url, "--device", "cpu", "--heartbeat", "1"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def work_here(suite, url, cache, monkeypatch, capsys):
    """One worker in this process (saves a interpreter start on a busy machine)."""
    from fairsqueeze.cli.main import main

    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(cache))
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    capsys.readouterr()
    assert main(["worker", str(suite), "--db", url, "--device", "cpu", "--heartbeat", "1"]) == 0
    out = capsys.readouterr().out
    return tuple(map(int, re.search(r"did (\d+) run\(s\) and (\d+) trial\(s\)", out).groups()))


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    runs, trials = map(int, re.search(r"did (\d+) run\(s\) and (\d+) trial\(s\)", out).groups())
    return runs, trials


def kill_in_first_apply(suite, url, cache, marker):
    """Start a worker whose method sleeps, and SIGKILL it once its first apply has begun."""
    victim = start_worker(suite, url, cache, sleep_s=120, marker=marker)
    deadline = time.time() + 120
    while not (marker.exists() and str(victim.pid) in marker.read_text()):
        assert victim.poll() is None and time.time() < deadline, "the worker never reached a method's apply"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def outcome(url):
    """Everything a suite produced, in a form that two databases can be compared by."""
    studies = {}
    for summary in optuna.get_all_study_summaries(storage=url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        studies[summary.study_name] = [(t.params, t.values) for t in complete]
    store = Store(url)
    runs = store.runs_frame()
    test = store.metrics_frame("test").pivot_table(index="run_key", columns="name", values="value")
    chosen = selections_frame(store)
    return {
        "studies": studies,
        "runs": sorted(runs["key"]),
        "status": set(runs["status"]),
        "test": {k: (test.loc[k, "accuracy"], test.loc[k, "eodd"]) for k in runs["key"]},
        "selected": sorted(zip(chosen["study"], chosen["policy"], chosen["run_key"])),
    }


MIXED = [
    "dense",
    {"name": "truncated_svd", "params": {"layer": "fc2"}, "sweep": {"k": [2, 4]}},
    {"name": "slr_w", "params": {"layer": "fc2", "k": 8}},
    {"name": "truncated_svd", "label": "svd-tuned", "params": {"layer": "fc2", "k": 8}, "tune": True},
    {"name": "slr_w", "label": "slr_w-tuned", "params": {"layer": "fc2", "k": 8}, "tune": True},
]


def test_two_workers_at_once_lose_nothing_and_do_nothing_twice(postgres_server, tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path, MIXED)
    cache = tmp_path / "cache"
    single = postgres_server.new_database()
    reference = work_here(suite, single, cache, monkeypatch, capsys)
    expected = outcome(single)

    shared = postgres_server.new_database()
    workers = [start_worker(suite, shared, cache) for _ in range(2)]
    done = [finish(w) for w in workers]
    got = outcome(shared)

    n_trials = sum(len(t) for t in expected["studies"].values())
    assert n_trials == 2 * 3 and reference == (len(expected["runs"]), n_trials)
    # every run and trial was done by exactly one of the two workers
    assert sum(r for r, _ in done) == len(got["runs"]) and sum(t for _, t in done) == n_trials
    assert got["status"] == {"done"}
    for name in got["studies"]:  # nothing failed, nothing extra
        study = optuna.load_study(study_name=name, storage=shared)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert got == expected  # and the results are those of one worker alone


def test_a_killed_worker_s_trial_is_retried_by_the_other_after_its_lease_expires(
    postgres_server, tmp_path, monkeypatch, capsys
):
    import sleepy_plugin  # noqa: F401  (registers sleepy_svd here too, after collection)

    suite = write_suite(tmp_path, [{"name": "sleepy_svd", "params": {"layer": "fc2", "k": 8}, "tune": True}])
    cache = tmp_path / "cache"
    single = postgres_server.new_database()
    work_here(suite, single, cache, monkeypatch, capsys)
    expected = outcome(single)

    shared = postgres_server.new_database()
    kill_in_first_apply(suite, shared, cache, tmp_path / "started")  # in the middle of its first trial

    runs, trials = finish(start_worker(suite, shared, cache))
    (name,) = expected["studies"]
    study = optuna.load_study(study_name=name, storage=shared)
    states = [t.state for t in study.trials]
    # the killed trial was failed once its lease expired and retried in its slot, same params
    assert states[0] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and len(states) == 4
    retry = study.trials[1]
    assert retry.user_attrs["slot"] == study.trials[0].user_attrs["slot"] == 0
    assert retry.params == study.trials[0].params
    assert trials == 3
    assert outcome(shared) == expected  # the final results equal a single-worker run


def test_a_killed_worker_s_fixed_run_is_taken_over_by_the_other(postgres_server, tmp_path, monkeypatch, capsys):
    import sleepy_plugin  # noqa: F401

    suite = write_suite(tmp_path, ["dense", {"name": "sleepy_svd", "params": {"layer": "fc2", "k": 4}}], name="pgfix")
    cache = tmp_path / "cache"
    single = postgres_server.new_database()
    work_here(suite, single, cache, monkeypatch, capsys)
    expected = outcome(single)

    shared = postgres_server.new_database()
    kill_in_first_apply(suite, shared, cache, tmp_path / "started")  # while it holds the run's lease

    runs, trials = finish(start_worker(suite, shared, cache))
    assert (runs, trials) == (1, 0)  # the dense run was finished by the victim, the killed one is redone
    assert outcome(shared) == expected


def test_twelve_workers_share_a_server_with_ten_connections(tmp_path, monkeypatch, capsys):
    """A claim is a lease taken in a short transaction and no worker holds a connection while it
    computes: twelve workers finish a suite on a server that allows ten connections, with
    every run and trial done once."""
    from pg import PostgresServer, server_binaries

    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    suite = write_suite(tmp_path, [
        "dense",
        {"name": "truncated_svd", "params": {"layer": "fc2"}, "sweep": {"k": [2, 4, 6, 8]}},
        {"name": "truncated_svd", "label": "svd-tuned", "params": {"layer": "fc2", "k": 8}, "tune": True},
    ], seeds=(0, 1), trials=2, name="pgmany")
    cache = tmp_path / "cache"
    server = PostgresServer(binaries, max_connections=10).start()
    try:
        url = server.new_database()
        workers = [start_worker(suite, url, cache) for _ in range(12)]
        done = [finish(w, timeout=600) for w in workers]
        got = outcome(url)
        runs = Store(url).runs_frame()
    finally:
        server.stop()
    assert got["status"] == {"done"}
    assert sum(r for r, _ in done) == len(runs)  # each run by exactly one worker
    assert sum(t for _, t in done) == 2 * 2  # each trial once
    for trials in got["studies"].values():
        assert len(trials) == 2


def test_a_worker_reads_the_schema_version_only_after_another_has_created_the_tables(postgres_url):
    """While one worker holds the creation lock with the tables half made (``meta`` without its
    version row), another starting worker waits for the lock instead of reading the half-made
    database as an old schema and refusing it."""
    import threading

    from sqlalchemy import create_engine, text

    from fairsqueeze.store.database import DB_LOCK_KEY, SCHEMA_VERSION, meta, schema

    holder = create_engine(postgres_url).connect()
    assert holder.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": DB_LOCK_KEY}).scalar()
    holder.commit()
    schema.create(holder)  # the first table only, no version row yet
    holder.commit()
    opened: list = []
    other = threading.Thread(target=lambda: opened.append(_open(postgres_url)))
    other.start()
    time.sleep(1.0)
    assert other.is_alive() and not opened  # waiting for the lock, not refusing
    meta.create_all(holder)
    holder.execute(schema.insert().values(key="schema_version", value=SCHEMA_VERSION))
    holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": DB_LOCK_KEY})
    holder.commit()
    holder.close()
    other.join(timeout=30)
    assert isinstance(opened[0], Store), opened


def _open(url):
    try:
        return Store(url)
    except Exception as exc:  # returned, so the test shows what a refusing worker said
        return exc
