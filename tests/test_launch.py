"""``fairsqueeze launch`` with submitit's local executor: workers as jobs on a real PostgreSQL
database (tests/pg.py), compared with one ``fairsqueeze run`` of the same suite."""
import os
import pickle
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from fairsqueeze.cli.main import main
from fairsqueeze.cli.launch import SuiteStatus, WorkerJob, make_executor, Resources, submit, suite_status
from test_workers_pg import outcome

TESTS = Path(__file__).parent


def write_suite(tmp_path, methods, name):
    suite = {
        "name": name, "seeds": [0],
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "tasks": [{"name": "digits", "options": {"target": "parity"}}],
        "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
        "tuning": {"trials": 2, "sampler": {"name": "tpe", "seed": 5}, "policies": ["best_utility"]},
        "methods": methods,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture
def job_env(tmp_path, monkeypatch):
    """What the jobs inherit: a shared dense-model cache, one thread each, no progress bars."""
    for key, value in {"FAIRSQUEEZE_CACHE": tmp_path / "cache", "FAIRSQUEEZE_QUIET": "1", "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}.items():
        monkeypatch.setenv(key, str(value))


def results(folder: Path, job_ids, timeout=240):
    """Each job's (state, value) from submitit's result pickle, or None for a job that never wrote
    one (killed); waits until every job has ended."""
    deadline = time.time() + timeout
    found = {}
    while time.time() < deadline:
        for jid in job_ids:
            path = folder / f"{jid}_0_result.pkl"
            if jid not in found and path.exists():
                time.sleep(0.2)  # written by a rename, but be safe
                with open(path, "rb") as fh:
                    found[jid] = pickle.load(fh)
        alive = [jid for jid in job_ids if jid not in found and _alive(int(jid))]
        if not alive:
            return {jid: found.get(jid) for jid in job_ids}
        time.sleep(0.5)
    for jid in alive:  # leave nothing running behind a failed test (the controller stops its task)
        os.kill(int(jid), signal.SIGINT)
    raise AssertionError(f"jobs still running after {timeout} s: {alive}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_two_launched_workers_finish_a_suite_as_one_run_does(postgres_server, tmp_path, job_env, capsys):
    suite = write_suite(tmp_path, [
        "dense",
        {"name": "truncated_svd", "params": {"layer": "fc2"}, "sweep": {"k": [2, 4]}},
        {"name": "slr_w", "label": "slr_w-tuned", "params": {"layer": "fc2", "k": 8}, "tune": True},
    ], "launched")
    single, shared = postgres_server.new_database(), postgres_server.new_database()
    assert main(["run", str(suite), "--db", single, "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()

    assert main(["launch", str(suite), "--status", "--db", shared]) == 0
    assert capsys.readouterr().out.strip() == "suite launched: no worker has started on it in this database yet"

    logs = tmp_path / "logs"
    assert main(["launch", str(suite), "--db", shared, "--workers", "2", "--executor", "local",
                 "--device", "cpu", "--logs", str(logs)]) == 0
    out = capsys.readouterr().out
    job_ids = re.search(r"submitted 2 worker\(s\) to local: (\d+) (\d+)", out).groups()
    done = results(logs, job_ids)
    assert [state for state, _ in done.values()] == ["success", "success"]
    assert [value for _, value in done.values()] == [0, 0]  # each worker's exit code
    summaries = [re.search(r"did (\d+) run\(s\) and (\d+) trial\(s\)", (logs / f"{j}_0_log.out").read_text())
                 for j in job_ids]
    expected = outcome(single)
    assert outcome(shared) == expected  # the results of a single run, nothing lost or doubled
    n_runs = len(expected["runs"])
    assert sum(int(m.group(1)) for m in summaries) == n_runs and sum(int(m.group(2)) for m in summaries) == 2

    assert main(["launch", str(suite), "--status", "--db", shared]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["runs", "pending", "0", "running", "0", "done", str(n_runs), "failed", "0"]
    assert lines[2].split()[:9] == ["trials", "pending", "0", "running", "0", "done", "2", "failed", "0"]


class SleepyWorkerJob(WorkerJob):
    """A launched worker that also knows the test-only ``sleepy_svd`` method."""

    def __call__(self, index=0):
        import sleepy_plugin  # noqa: F401  (registers sleepy_svd in the job's process)

        return super().__call__(index)


def test_killing_a_launched_job_mid_run_loses_nothing(postgres_server, tmp_path, job_env, monkeypatch, request):
    import sleepy_plugin  # noqa: F401

    suite = write_suite(tmp_path, ["dense", {"name": "sleepy_svd", "params": {"layer": "fc2", "k": 4}}], "killed")
    single, shared = postgres_server.new_database(), postgres_server.new_database()
    assert main(["run", str(suite), "--db", single, "--device", "cpu", "--quiet"]) == 0
    expected = outcome(single)

    marker = tmp_path / "applied"
    monkeypatch.setenv("SLEEPY_MARKER", str(marker))
    monkeypatch.setenv("SLEEPY_S", "3")
    logs = tmp_path / "logs"
    job = SleepyWorkerJob(str(suite), shared, "cpu", requeue=True, suite_name="killed")
    jobs = submit(job, 2, make_executor("local", logs, Resources(time_min=10), "killed"))
    request.addfinalizer(lambda: [j.cancel() for j in jobs if j.state == "RUNNING"])  # nothing left behind
    deadline = time.time() + 180
    while not marker.exists() or not marker.read_text().strip():
        assert time.time() < deadline, "no launched worker reached the method's apply"
        time.sleep(0.2)
    victim = int(marker.read_text().split()[0])
    status = suite_status(shared, "killed")
    assert status.runs["running"] == 1 and status.remaining() >= 1
    assert status.running[0].startswith("sleepy_svd(k=4,layer=fc2), mlp(hidden=[32, 16]), seed 0, for ")
    assert job.checkpoint(0) is not None  # a preempted job would be resubmitted: work remains
    os.kill(victim, signal.SIGKILL)  # the worker process of one job, in the middle of its run

    done = results(logs, [j.job_id for j in jobs])
    assert sorted(str(v) for v in done.values()) == ["('success', 0)", "None"]  # one killed, one finished
    pids = [int(p) for p in marker.read_text().split()]
    assert len(pids) == 2 and pids[0] == victim and pids[1] != victim  # the other job redid the run
    assert outcome(shared) == expected
    status = suite_status(shared, "killed")
    assert (status.runs["done"], status.remaining()) == (2, 0)
    assert job.checkpoint(0) is None  # nothing left: a preempted job would simply end
    assert WorkerJob(str(suite), shared, requeue=False).checkpoint(0) is None
    assert SuiteStatus("fresh").remaining() == 1  # nothing recorded yet: all of it remains


def test_gpu_suites_refuse_a_cpu_only_start_unless_device_cpu_is_explicit(tmp_path, capsys):
    import shutil

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU-only machines")
    empty = str(tmp_path / "no-data")
    assert main(["run", "fairlrf_table1", "--data-root", empty]) == 2
    assert capsys.readouterr().err.strip() == ("fairsqueeze: error: suite fairlrf_table1 needs a GPU and CUDA is not"
                                               " available on this machine; pass --device cpu to run it on the CPU anyway")
    assert main(["run", "fairlrf_table1", "--data-root", empty, "--device", "cpu"]) == 2
    assert "needs a GPU" not in capsys.readouterr().err  # past the check: it stops at the missing data instead

    db = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert main(["launch", "fairlrf_table2", "--db", db, "--executor", "local"]) == 2
    assert "needs a GPU and the jobs ask for none (--gpus 0); ask for --gpus 1" in capsys.readouterr().err
    if shutil.which("sbatch") is None and shutil.which("srun") is None:  # past the GPU check with --gpus 1 or --device cpu: stops at sbatch
        for extra in (["--gpus", "1"], ["--device", "cpu"]):
            assert main(["launch", "fairlrf_table2", "--db", db, "--executor", "slurm", *extra]) == 2
            assert "sbatch is not on this machine's PATH" in capsys.readouterr().err

    assert main(["launch", "default", "--db", db, "--workers", "0", "--executor", "local"]) == 2
    assert capsys.readouterr().err.strip() == "fairsqueeze: error: --workers 0: expected a positive number"
    assert main(["launch", "default", "--status", "--db", db]) == 2
    assert capsys.readouterr().err.startswith(f"fairsqueeze: error: --db {db}: cannot open the database:")

    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\nneeds_gpu: sometimes\ntasks: [digits]\nmodels: [mlp]\nmethods: [dense]\n")
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "needs_gpu" in err and "expected true or false" in err and len(err.strip().splitlines()) == 1


def test_slurm_gets_one_array_job_with_the_requested_resources(tmp_path, monkeypatch, capsys):
    """sbatch is replaced by a script that keeps the submission file and answers as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the jobs would run it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    db = "postgresql+psycopg://me@dbhost/study"
    assert main(["launch", "fairlrf_table1", "--db", db, "--workers", "3", "--executor", "slurm", "--partition", "gpu",
                 "--time", "90", "--cpus", "4", "--gpus", "1", "--mem", "16", "--device", "cuda", "--requeue",
                 "--logs", str(tmp_path / "logs")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "submitted 3 worker(s) to slurm: 4242_0 4242_1 4242_2"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=16GB", "#SBATCH --job-name=fairsqueeze-fairlrf_table1"):
        assert line in script.splitlines(), line
    pickled = sorted((tmp_path / "logs").glob("*_submitted.pkl"))
    assert [p.name for p in pickled] == [f"4242_{i}_submitted.pkl" for i in range(3)]
    with open(pickled[0], "rb") as fh:
        job = pickle.load(fh).function  # what every array element runs
    assert job.argv() == ["worker", job.suite, "--db", db, "--device", "cuda"] and job.requeue
    assert job.suite.endswith("fairlrf_table1.yaml") and os.path.isabs(job.suite)


def test_launch_files_hold_no_password(tmp_path, monkeypatch, capsys):
    """The jobs get the database password through their environment (PGPASSWORD, which SLURM
    exports to them), never through a file in the launch folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/logs/submitted.sh\necho Submitted batch job 77\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PGPASSWORD", "before")  # restored after the test
    db = "postgresql+psycopg://me:S3cr%40t-pw@dbhost:5433/study"
    assert main(["launch", "fairlrf_table1", "--db", db, "--workers", "2", "--executor", "slurm", "--gpus", "1",
                 "--logs", str(tmp_path / "logs")]) == 0
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert any(p.name.endswith("_submitted.pkl") for p in files) and any(p.name == "submitted.sh" for p in files)
    for path in files:
        content = path.read_bytes()
        assert b"S3cr" not in content and b"%40t-pw" not in content, path
    with open(next(p for p in files if p.name.endswith("_submitted.pkl")), "rb") as fh:
        job = pickle.load(fh).function
    assert job.db == "postgresql+psycopg://me@dbhost:5433/study"
    assert os.environ["PGPASSWORD"] == "S3cr@t-pw"  # what the jobs inherit
    assert "S3cr" not in capsys.readouterr().out
