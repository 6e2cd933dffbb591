"""``run --jobs``: its job processes die with it whatever ends it (SIGKILL, SIGTERM), so a
resume started at once is never refused by an orphan holding the SQLite writer's lock; a job
process lost on its own is replaced and its runs computed again with the same seeds."""
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fairsqueeze.cli.main import main
from test_crash import cli_env, stored

SUITE = """\
name: crash
seeds: [0, 1]
train: {epochs: 2, batch_size: 64, lr: 0.05}
tasks: [{name: digits, options: {target: parity}}]
models: [{name: mlp, options: {hidden: [32, 16]}}]
methods:
  - dense
  - {name: truncated_svd, label: svd, params: {layer: fc2}, sweep: {k: [2, 4]}}
"""


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def job_processes(parent: int) -> list[int]:
    """The parent's forked job processes (same command line as the parent)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return []
    own = cmdline(parent)
    return [int(c) for c in children if cmdline(int(c)) == own]


def start(tmp_path, jobs: int = 2) -> tuple[subprocess.Popen, list[int]]:
    """``run --jobs`` in a child process, once its job processes have started."""
    args = [sys.executable, "-m", "fairsqueeze.cli.main", "run", str(tmp_path / "s.yaml"), "--db",
            f"sqlite:///{tmp_path}/k.db", "--quiet", "--jobs", str(jobs)]
    proc = subprocess.Popen(args, env=cli_env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while len(children := job_processes(proc.pid)) < jobs:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, children


def resume(tmp_path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "fairsqueeze.cli.main", "run", str(tmp_path / "s.yaml"), "--db",
            f"sqlite:///{tmp_path}/k.db", "--quiet", "--jobs", "2"]
    return subprocess.run(args, env=cli_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The suite computed without job processes (results do not depend on --jobs)."""
    tmp = tmp_path_factory.mktemp("reference")
    (tmp / "s.yaml").write_text(SUITE)
    db = f"sqlite:///{tmp}/ref.db"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAIRSQUEEZE_CACHE", str(tmp / "cache"))
        assert main(["run", str(tmp / "s.yaml"), "--db", db, "--quiet", "--jobs", "1"]) == 0
    return stored(db)


@pytest.fixture
def leftovers():
    """Job processes a failing test would leave behind are ended by their ids."""
    started: list[int] = []
    yield started
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_jobs_parent_takes_its_job_processes_and_a_resume_at_once_succeeds(tmp_path, reference, how,
                                                                                    leftovers):
    (tmp_path / "s.yaml").write_text(SUITE)
    proc, children = start(tmp_path)
    leftovers += children
    proc.send_signal(how)
    out, err = proc.communicate(timeout=60)
    if how == signal.SIGTERM:  # handled like an interrupt: one line, the conventional status
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert len(err.strip().splitlines()) == 1 and "terminated" in err and "Traceback" not in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = resume(tmp_path)  # at once: no orphan may hold the writer's lock
    assert resumed.returncode == 0, resumed.stderr
    assert not [pid for pid in children if alive(pid)]
    pd.testing.assert_frame_equal(stored(f"sqlite:///{tmp_path}/k.db"), reference)


def test_a_lost_job_process_is_replaced_and_the_run_ends_as_an_uninterrupted_one(tmp_path, reference, leftovers):
    (tmp_path / "s.yaml").write_text(SUITE)
    proc, children = start(tmp_path)
    leftovers += children
    os.kill(children[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "a job process was lost" in err and "Traceback" not in err
    pd.testing.assert_frame_equal(stored(f"sqlite:///{tmp_path}/k.db"), reference)


def test_jobs_are_capped_at_the_pending_runs_and_warn_above_the_cores(tmp_path, monkeypatch, capsys):
    from fairsqueeze.engine import jobs
    from fairsqueeze.engine.jobs import cores

    sizes = []
    real = jobs.process_pool

    def recorded(n, *args, **kwargs):
        sizes.append(n)
        return real(n, *args, **kwargs)

    monkeypatch.setattr(jobs, "process_pool", recorded)
    monkeypatch.setattr(logging.root, "handlers", [])  # the CLI's own stderr handler, as in test_bad_inputs
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "s.yaml").write_text(SUITE.replace("seeds: [0, 1]", "seeds: [0]").replace("k: [2, 4]", "k: [2]"))
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--db", f"sqlite:///{tmp_path}/j.db", "--quiet", "--jobs", "1000"]) == 0
    assert sizes == [2]  # two runs: two processes, not a thousand
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"WARNING: --jobs 1000 is more than the {cores()} cores this process may use: the processes share"
                   " them"]


TUNED = """\
name: tuned
seeds: [0]
train: {epochs: 2, batch_size: 64, lr: 0.05}
tasks: [{name: digits, options: {target: parity}}]
models: [{name: mlp, options: {hidden: [32, 16]}}]
tuning: {trials: 2, policies: [best_utility]}
methods:
  - dense
  - {name: truncated_svd, label: svd, params: {layer: fc2, k: 8}, tune: true}
  - {name: slr_w, params: {layer: fc2, k: 8}, tune: true}
"""


def dying(*args, **kwargs):
    os._exit(9)  # a job process lost in the middle of its work (forked: the patch is in it too)


def test_a_run_whose_job_process_is_lost_twice_is_stored_as_failed(tmp_path, monkeypatch, capsys):
    from fairsqueeze.engine import jobs
    from fairsqueeze.store.database import Store

    monkeypatch.setattr(jobs, "_compute", dying)
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "s.yaml").write_text(SUITE.replace("seeds: [0, 1]", "seeds: [0]").replace("k: [2, 4]", "k: [2]"))
    db = f"sqlite:///{tmp_path}/j.db"
    assert main(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet", "--jobs", "2"]) == 1
    runs = Store(db).runs_frame()
    assert len(runs) == 2 and set(runs["status"]) == {"failed"}
    assert runs["error"].str.startswith("its job process was lost twice").all()
    monkeypatch.undo()
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    assert main(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet", "--jobs", "2"]) == 0  # retried on a rerun


def test_a_lost_job_process_computing_trials_is_one_line_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    from fairsqueeze.engine import jobs

    real = jobs.trial_in_process
    monkeypatch.setattr(jobs, "trial_in_process", dying)
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "s.yaml").write_text(TUNED)
    db = f"sqlite:///{tmp_path}/t.db"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["fairsqueeze: error: a job process computing trials was lost (killed, or out"
                                        " of memory); finished trials are kept, rerun to resume"]
    monkeypatch.setattr(jobs, "trial_in_process", real)
    assert main(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet", "--jobs", "2"]) == 0
    from fairsqueeze.cli.launch import suite_status

    status = suite_status(db, "tuned")  # every study has its two trials, every selected run is done
    assert status.trials["done"] == 4 and status.trials["pending"] == status.trials["running"] == 0
    assert status.runs["done"] == sum(status.runs.values()) and not status.runs["failed"]
