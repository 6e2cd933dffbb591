"""bench/worker.py: studies by slot, retries that keep their seeds, budgets that failures do not use."""
import os
import signal
import subprocess
import sys

import optuna
import pytest
import yaml

from fairsqueeze.cli.main import main
from fairsqueeze.store.database import Store
from fairsqueeze.reports.tuning_report import selections_frame

SUITE = {
    "name": "slots",
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "tasks": [{"name": "digits", "options": {"target": "parity"}}],
    "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
    "tuning": {"trials": 4, "sampler": {"name": "tpe", "seed": 3, "options": {"n_startup_trials": 2}},
               "policies": ["best_utility", "utopia"]},
    "methods": [{"name": "fairprune", "params": {"ratio": 0.4, "scoring_size": 16}, "tune": True}],
}

KILL_AT_TRIAL = """\
import os, signal, sys
import fairsqueeze.engine.worker as worker
nth, original, calls = int(sys.argv[1]), worker.execute_trial, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
worker.execute_trial = dying
from fairsqueeze.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def write(folder) -> str:
    path = folder / "slots.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return str(path)


def complete_trials(db: str) -> list[tuple]:
    """(slot, params, values, method seed) of every complete trial, by slot."""
    (summary,) = optuna.get_all_study_summaries(storage=db)
    study = optuna.load_study(study_name=summary.study_name, storage=db)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return sorted((t.user_attrs["slot"], t.params, tuple(t.values), t.user_attrs["result"]["seed"]) for t in done)


def failed_trials(db: str) -> int:
    (summary,) = optuna.get_all_study_summaries(storage=db)
    study = optuna.load_study(study_name=summary.study_name, storage=db)
    return len(study.get_trials(states=(optuna.trial.TrialState.FAIL,)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    db = f"sqlite:///{folder}/ref.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRSQUEEZE_CACHE", str(folder / "cache"))
        mp.setenv("FAIRSQUEEZE_QUIET", "1")
        assert main(["run", write(folder), "--db", db, "--quiet", "--jobs", "1"]) == 0
    return db


def test_a_failed_trial_is_retried_in_its_slot_and_does_not_use_the_budget(isolated, uninterrupted, monkeypatch):
    """The second trial raises once: it is retried with the same params and seed, the study
    still gets 4 complete trials, and they equal an uninterrupted study's."""
    import fairsqueeze.engine.worker as worker

    original, calls = worker.execute_trial, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("a transient failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(worker, "execute_trial", flaky)
    db = f"sqlite:///{isolated}/flaky.db"
    assert main(["run", write(isolated), "--db", db, "--quiet", "--jobs", "1"]) == 0
    assert failed_trials(db) == 1
    assert complete_trials(db) == complete_trials(uninterrupted)
    from fairsqueeze.reports.tuning_report import format_fronts

    assert "4/4 trials complete (1 failed attempt(s), retried)" in format_fronts(Store(db))
    slots = Store(db).slots(optuna.get_all_study_summaries(storage=db)[0].study_name)
    assert list(slots["state"]) == ["complete"] * 4 and list(slots["attempts"]) == [1, 2, 1, 1]
    # the selections, and so the selected runs, are those of the uninterrupted study
    columns = ["policy", "trial", "params", "method_seed"]
    ours = selections_frame(Store(db))[columns].sort_values("policy").reset_index(drop=True)
    theirs = selections_frame(Store(uninterrupted))[columns].sort_values("policy").reset_index(drop=True)
    assert ours.drop(columns="trial").equals(theirs.drop(columns="trial"))


def test_a_study_killed_mid_trial_resumes_to_the_uninterrupted_trials(isolated, uninterrupted):
    """SIGKILL during the third trial; the rerun fails the trial left running, retries it in
    its slot with the same params and seed, and the later trials keep their seeds."""
    db = f"sqlite:///{isolated}/killed.db"
    env = {**os.environ, "FAIRSQUEEZE_CACHE": str(isolated / "cache"), "FAIRSQUEEZE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = ["run", write(isolated), "--db", db, "--quiet", "--jobs", "1"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_TRIAL, "3", *args], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run([sys.executable, "-m", "fairsqueeze.cli.main", *args], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert failed_trials(db) == 1  # the attempt that died
    assert complete_trials(db) == complete_trials(uninterrupted)


def test_studies_in_two_processes_give_the_trials_and_selections_of_one(isolated, uninterrupted):
    """--jobs 2 computes different studies' trials at once (two seeds: two studies), this
    process asks and tells: the trials, selections and selected runs' metrics are --jobs 1's."""
    suite = {**SUITE, "seeds": [0, 1]}
    path = isolated / "two.yaml"
    path.write_text(yaml.safe_dump(suite))
    dbs = {}
    for jobs in (1, 2):
        dbs[jobs] = f"sqlite:///{isolated}/jobs{jobs}.db"
        assert main(["run", str(path), "--db", dbs[jobs], "--quiet", "--jobs", str(jobs)]) == 0
    studies = {}
    for jobs, db in dbs.items():
        found = {}
        for summary in optuna.get_all_study_summaries(storage=db):
            study = optuna.load_study(study_name=summary.study_name, storage=db)
            found[summary.study_name] = sorted((t.user_attrs["slot"], t.params, tuple(t.values)) for t in study.trials)
        studies[jobs] = found
    assert studies[1] == studies[2] and len(studies[1]) == 2
    columns = ["study", "policy", "params", "method_seed", "run_key"]
    chosen = [selections_frame(Store(db))[columns].sort_values(["study", "policy"]).reset_index(drop=True)
              for db in dbs.values()]
    assert chosen[0].equals(chosen[1])
    metrics = [Store(db).metrics_frame().set_index(["run_key", "split", "name"])["value"].sort_index()
               for db in dbs.values()]
    assert metrics[0].equals(metrics[1])
