"""Start many workers on a cluster (``fairsqueeze launch``) and watch a suite's progress.

There is no scheduler of our own: ``launch`` submits N ``fairsqueeze worker`` processes as one
submitit job array (SLURM, or submitit's local backend on this machine), and the database
hands out the work. A preempted, timed-out or killed job loses nothing: its claim is released
or expires and another worker takes the run. With ``requeue`` a job that SLURM preempts or
times out is resubmitted (submitit's checkpoint) while the suite still has work left.

``suite_status`` reads progress from the database only, so it shows workers started in any way.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.store.reader import has_results, open_store

EXECUTORS = ("slurm", "local")
STATES = ("pending", "running", "done", "failed")
SHOWN = 10  # running and failed runs listed by --status


@dataclass
class Resources:
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    partition: str | None = None


class WorkerJob(submitit.helpers.Checkpointable):
    """One array element: ``fairsqueeze worker`` in the job's process."""

    def __init__(self, suite: str, db: str, device: str = "auto", data_root: str | None = None,
                 requeue: bool = False, suite_name: str | None = None):
        self.suite, self.db, self.device, self.data_root = suite, db, device, data_root
        self.requeue, self.suite_name = requeue, suite_name or suite

    def argv(self) -> list[str]:
        args = ["worker", self.suite, "--db", self.db, "--device", self.device]
        return args + (["--data-root", self.data_root] if self.data_root else [])

    def __call__(self, index: int = 0) -> int:
        import argparse

        from fairsqueeze.cli.commands import cmd_worker

        args = argparse.Namespace(command="worker", suite=self.suite, db=self.db, device=self.device,
                                  data_root=self.data_root, quiet=False, skip_missing_data=False,
                                  heartbeat=None, redefine=False)
        code = cmd_worker(args)
        if code != 0:  # the scheduler then shows the job as failed; the reason is in its log
            raise RuntimeError(f"fairsqueeze {' '.join(self.argv())} exited with status {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit when SLURM preempts the job or its time runs out: resubmit it
        while the suite has work left, otherwise let it end."""
        if self.requeue and suite_status(self.db, self.suite_name).remaining():
            return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
        return None


def without_password(url: str) -> tuple[str, str | None]:
    """The database URL without its password, and the password. A job file (submitit pickles
    the job into the logs folder) must hold no secret: the jobs get the password through their
    environment instead (``PGPASSWORD``, which PostgreSQL's client library reads)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url, None
    if not parsed.password:
        return url, None
    return parsed._replace(password=None).render_as_string(hide_password=False), str(parsed.password)


def make_executor(kind: str, folder: Path, resources: Resources, name: str) -> submitit.AutoExecutor:
    if kind not in EXECUTORS:
        raise FairsqueezeError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
    lacking = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if kind == "slurm" and lacking:
        raise FairsqueezeError(f"--executor slurm: {lacking[0]} is not on this machine's PATH; run launch on the"
                               " cluster's login node (or use --executor local)")
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    params = {"name": name, "timeout_min": resources.time_min, "cpus_per_task": resources.cpus,
              "gpus_per_node": resources.gpus, "tasks_per_node": 1, "stderr_to_stdout": True}
    if resources.mem_gb is not None:
        params["mem_gb"] = resources.mem_gb
    if kind == "slurm" and resources.partition:
        params["slurm_partition"] = resources.partition
    executor.update_parameters(**params)
    return executor


def submit(job: WorkerJob, workers: int, executor) -> list:
    """N copies of ``job`` as one array (one SLURM array job; N processes locally), all
    allowed to run at once (submitit caps arrays at 256 otherwise)."""
    if executor.cluster == "slurm":
        executor.update_parameters(slurm_array_parallelism=workers)
    return executor.map_array(job, list(range(workers)))


# -- watching --------------------------------------------------------------------------------
@dataclass
class SuiteStatus:
    suite: str
    runs: Counter = field(default_factory=Counter)
    trials: Counter = field(default_factory=Counter)
    studies: int = 0
    started: bool = False  # a worker has recorded the suite's membership
    failures: list[str] = field(default_factory=list)  # "label, model, seed: the error's last line"
    running: list[str] = field(default_factory=list)  # "label, model, seed, for N s"

    def remaining(self) -> int:
        """Work a new worker would do: pending or orphaned-running runs and trials, or the whole
        suite when no worker has started (failed runs are retried by new workers too, but a
        deterministic failure must not requeue a job forever)."""
        if not self.started:
            return 1
        return self.runs["pending"] + self.runs["running"] + self.trials["pending"] + self.trials["running"]

    def lines(self) -> list[str]:
        def row(counts: Counter) -> str:
            return "  ".join(f"{s} {counts[s]}" for s in STATES)

        if not self.started:
            return [f"suite {self.suite}: no worker has started on it in this database yet"]
        out = [f"suite {self.suite}:",
               f"  runs    {row(self.runs)}",
               f"  trials  {row(self.trials)}  ({self.studies} studies; selected runs join the runs as policies choose)"]
        if self.runs["running"] or self.trials["running"]:
            out.append("  running: a worker holds its lease now (renewed while it computes; a dead worker's lease expires and is taken over)")
        out += [f"  running: {line}" for line in self.running[:SHOWN]]
        out += [f"  failed: {line}" for line in self.failures[:SHOWN]]
        if max(len(self.running), len(self.failures)) > SHOWN:
            out.append(f"  (first {SHOWN} of each shown)")
        return out


def suite_status(url: str, suite: str) -> SuiteStatus:
    """Pending / running / done / failed runs and trials of ``suite``, from the database alone."""
    from fairsqueeze.reports.tuning_report import studies

    import optuna

    status = SuiteStatus(suite)
    if not has_results(url):  # no worker has created the tables yet
        return status
    store = open_store(url)
    members = store.members_frame(suite).drop_duplicates("run_key")
    status.started = not members.empty
    rows = store.runs_frame(keys=members["run_key"]).set_index("key")
    now = time.time()
    work = store.work_frame().set_index("key")
    live = work[work["holder"].notna() & (work["expires_at"] > now)]  # a lease held now: being computed
    for _, member in members.iterrows():
        key = member["run_key"]
        state = "running" if key in live.index else rows["status"].get(key, "pending")
        state = "pending" if state == "running" and key not in live.index else state  # a dead worker's row
        status.runs[state] += 1
        if state == "running":
            since = live.loc[key, "claimed_at"]
            status.running.append(f"{member['label']}, {member['model']}, seed {member['seed']}, for {now - since:.0f} s")
        if state == "failed":
            error = rows.loc[key, "error"] or ""
            status.failures.append(f"{member['label']}, {member['model']}, seed {member['seed']}: "
                                   f"{error.strip().splitlines()[-1] if error.strip() else 'no error stored'}")
    summaries = studies(store, suite)
    status.studies = len(summaries)
    if summaries:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        for summary in summaries:
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
            states = Counter(t.state for t in trials)
            done = states[optuna.trial.TrialState.COMPLETE] + states[optuna.trial.TrialState.PRUNED]
            running = states[optuna.trial.TrialState.RUNNING]
            status.trials["done"] += done
            status.trials["running"] += running
            status.trials["failed"] += states[optuna.trial.TrialState.FAIL]
            status.trials["pending"] += max(0, int(summary.user_attrs.get("trials", 0)) - done - running)
    return status


def print_jobs(jobs: list, kind: str, folder: Path) -> None:
    ids = [job.job_id for job in jobs]
    print(f"submitted {len(ids)} worker(s) to {kind}: {' '.join(ids)}")
    print(f"logs: {folder}/<job id>_0_log.out; progress: fairsqueeze launch --status SUITE --db URL")
    sys.stdout.flush()
