"""A suite killed with SIGKILL anywhere resumes and ends with exactly the results of an
uninterrupted run: nothing lost, duplicated or half-written; only unfinished runs recomputed."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from fairsqueeze.cli.main import main
from fairsqueeze.reports.results import metric_table, suite_runs
from fairsqueeze.store.database import Store

SUITE = """\
name: crash
seeds: [0, 1]
train: {epochs: 3, batch_size: 64, lr: 0.05}
tasks: [{name: digits, options: {target: parity}}]
models: [{name: mlp, options: {hidden: [32, 16]}}]
methods:
  - dense
  - {name: truncated_svd, label: svd, params: {layer: fc2}, sweep: {k: [2, 4]}}
  - {name: fairlrf, params: {layer: fc2, k: 8}}
"""

# Runs the CLI in a child process that SIGKILLs itself the n-th time it enters ``target``.
KILLER = textwrap.dedent("""\
    import importlib, os, signal, sys
    module, attr, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    owner_path, _, name = attr.rpartition(".")
    owner = importlib.import_module(module)
    for part in filter(None, owner_path.split(".")):
        owner = getattr(owner, part)
    original, calls = getattr(owner, name), [0]
    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, name, dying)
    from fairsqueeze.cli.main import main
    sys.exit(main(sys.argv[4:]))
""")

PHASES = {
    "dense training": ("fairsqueeze.engine.training", "Trainer.step", 20),
    "a method": ("fairsqueeze.methods.lowrank", "FairLRF.row_scores", 1),
    "evaluation": ("fairsqueeze.engine.execute", "evaluate_outcome", 3),
    "a database write": ("fairsqueeze.store.database", "_pack", 4),  # inside finish_run's transaction
}


def stored(db: str) -> pd.DataFrame:
    store = Store(db)
    members = suite_runs(store, "crash")
    assert (members["status"] == "done").all(), members[["label", "status", "error"]]
    frames = []
    for split in ("val", "test"):
        table = metric_table(store, members["run_key"], split)
        table.columns = [f"{split}.{c}" for c in table.columns]
        frames.append(table)
    values = members.set_index("run_key")[["label", "seed"]].join(pd.concat(frames, axis=1))
    return values.set_index(["label", "seed"]).sort_index()


def cli_env(cache) -> dict:
    return {**os.environ, "FAIRSQUEEZE_CACHE": str(cache), "FAIRSQUEEZE_QUIET": "1", "OMP_NUM_THREADS": "1"}


def child(args, cache, killer=None):
    if args[0] == "run":  # the killers patch this process: compute here, not in --jobs processes
        args = [*args, "--jobs", "1"]
    script = ["-c", KILLER, *killer] if killer else ["-m", "fairsqueeze.cli.main"]
    return subprocess.run([sys.executable, *script, *args], env=cli_env(cache), capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    (tmp / "s.yaml").write_text(SUITE)
    db = f"sqlite:///{tmp}/ref.db"
    done = child(["run", str(tmp / "s.yaml"), "--db", db, "--quiet"], tmp / "cache")
    assert done.returncode == 0, done.stderr
    return stored(db)


# a kill inside the write transaction stays in the default run; the other phases (about 30 s
# each) run with the slow tests
@pytest.mark.parametrize("phase", [p if p == "a database write" else pytest.param(p, marks=pytest.mark.slow)
                                   for p in PHASES])
def test_a_kill_during_each_phase_resumes_to_the_same_results(tmp_path, reference, phase):
    (tmp_path / "s.yaml").write_text(SUITE)
    db = f"sqlite:///{tmp_path}/k.db"
    args = ["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet"]
    module, attr, nth = PHASES[phase]
    killed = child(args, tmp_path / "cache", killer=[module, attr, str(nth)])
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    finished_before = set(Store(db).runs_frame(status="done")["key"]) if (tmp_path / "k.db").exists() else set()

    resumed = child(args, tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(stored(db), reference)
    runs = Store(db).runs_frame()
    assert runs["key"].is_unique and set(runs["status"]) == {"done"}
    # finished runs were not recomputed: their rows still carry the first process's timestamps
    if finished_before:
        assert runs.set_index("key").loc[sorted(finished_before), "finished_at"].max() < \
            runs["finished_at"].max()


@pytest.mark.slow
def test_kills_at_random_points_resume_to_the_same_results(tmp_path, reference):
    (tmp_path / "s.yaml").write_text(SUITE)
    db = f"sqlite:///{tmp_path}/k.db"
    args = [sys.executable, "-m", "fairsqueeze.cli.main", "run", str(tmp_path / "s.yaml"), "--db", db, "--quiet"]
    rng = random.Random(7)
    for _ in range(6):
        proc = subprocess.Popen(args, env=cli_env(tmp_path / "cache"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet"]) == 0
    pd.testing.assert_frame_equal(stored(db), reference)


def test_an_interrupted_suite_then_another_suite_on_the_same_database(tmp_path, reference):
    (tmp_path / "s.yaml").write_text(SUITE)
    other = SUITE.replace("name: crash", "name: other").replace("sweep: {k: [2, 4]}", "sweep: {k: [4, 6]}")
    (tmp_path / "o.yaml").write_text(other)
    db = f"sqlite:///{tmp_path}/k.db"
    killed = child(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet"], tmp_path / "cache",
                   killer=["fairsqueeze.engine.execute", "evaluate_outcome", "4"])
    assert killed.returncode == -signal.SIGKILL
    assert child(["run", str(tmp_path / "o.yaml"), "--db", db, "--quiet"], tmp_path / "cache").returncode == 0
    store = Store(db)
    other_members = suite_runs(store, "other")
    assert (other_members["status"] == "done").all() and len(other_members) == 2 * 4
    assert child(["run", str(tmp_path / "s.yaml"), "--db", db, "--quiet"], tmp_path / "cache").returncode == 0
    pd.testing.assert_frame_equal(stored(db), reference)
