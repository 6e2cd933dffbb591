"""The ``fairsqueeze`` command line: run suites, list registries, show results."""
from __future__ import annotations

import argparse
import logging
import math
import signal
import sys

from fairsqueeze.cli.commands import check_gpu_request, print_tables, cmd_run, cmd_worker
from fairsqueeze.core.errors import FairsqueezeError

log = logging.getLogger("fairsqueeze")


class Parser(argparse.ArgumentParser):
    """An argument error is one line (the usage is for ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class Terminated(KeyboardInterrupt):
    """A SIGTERM, handled as an interrupt: job processes stopped, finished runs kept."""


def _terminate(signum, frame):
    raise Terminated()


def _add_store(p: argparse.ArgumentParser) -> None:
    from fairsqueeze.store.database import DEFAULT_URL

    p.add_argument("--db", default=DEFAULT_URL, help=f"SQLAlchemy database URL (default {DEFAULT_URL})")


def _add_redefine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redefine", action="store_true",
                   help="the suite file changed since its name was last run: record the new definition and keep"
                        " the old one's runs as suite NAME@vN (without it, a changed suite is refused)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fairsqueeze", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (a YAML file or a bundled suite name)")
    run.add_argument("suite")
    run.add_argument("--data-root", default=None, help="dataset folder (default: $FAIRSQUEEZE_DATA or ./data)")
    run.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    run.add_argument("--quiet", action="store_true", help="no progress bars, no tables")
    run.add_argument(
        "--skip-missing-data", action="store_true", help="skip tasks whose files are absent instead of failing"
    )
    run.add_argument("--jobs", type=_jobs, default=None,
                     help="processes computing runs at once (default: the number of cores); this one writes")
    run.add_argument("--timings", default=None, metavar="PATH",
                     help="also write the fixed runs' wall time and its phases (dense, method, evaluation) as JSON")
    run.add_argument("--smoke-check", action="store_true",
                     help="run the first seed first and name each entry that changed no prediction (then go on)")
    run.add_argument("--refuse-no-op", action="store_true",
                     help="as --smoke-check, but stop (exit 2) when an entry changed no prediction")
    _add_redefine(run)
    _add_store(run)

    worker = sub.add_parser(
        "worker", help="take a suite's pending runs and tuning trials from the database until none remain"
    )
    worker.add_argument("suite")
    worker.add_argument("--data-root", default=None, help="dataset folder (default: $FAIRSQUEEZE_DATA or ./data)")
    worker.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    worker.add_argument("--quiet", action="store_true", help="no summary at the end")
    worker.add_argument("--skip-missing-data", action="store_true", help="skip tasks whose files are absent")
    worker.add_argument("--heartbeat", type=_seconds, default=None,
                        help="lease renewal interval, seconds (a lease lasts three); an expired lease is taken over")
    _add_redefine(worker)
    _add_store(worker)

    fronts = sub.add_parser("fronts", help="list tuning studies, their Pareto fronts and the selected results")
    fronts.add_argument("--suite", default=None, help="only studies of this suite")
    _add_store(fronts)

    lst = sub.add_parser("list", help="list registered tasks, models, methods or bundled suites")
    lst.add_argument("what", choices=["tasks", "models", "methods", "suites"])

    show = sub.add_parser("show", help="print the results table of each task")
    show.add_argument("--suite", default=None, help="only runs of this suite")
    show.add_argument("--split", default="test", choices=["val", "test"])
    _add_store(show)

    report = sub.add_parser("report", help="write a suite's HTML report and its table exports")
    report.add_argument("suite", help="suite name as stored, a bundled suite or a suite file")
    report.add_argument("--out", default=None, help="output folder (default results/reports/SUITE)")
    report.add_argument("--split", default="test", choices=["val", "test"])
    report.add_argument("--claims", action="append", default=[], metavar="FILE",
                        help="a claims file read beside the packaged claims and the plugins' (repeatable)")
    _add_store(report)

    check = sub.add_parser("check-plugin", help="run the conformance checks of a method on a tiny task")
    check.add_argument("name", help="a registered method (entry-point plugins included)")
    check.add_argument("--params", default=None, help='the method\'s parameters as JSON, e.g. \'{"rank": 2}\''
                                                       " (default: the method's own conformance_params)")
    check.add_argument("--device", default="cpu", help="cpu (default), auto or cuda[:N]")

    board = sub.add_parser("leaderboard", help="write the HTML leaderboard of every stored task and model")
    board.add_argument("--out", default="results/leaderboard", help="output folder (default results/leaderboard)")
    board.add_argument("--claims", action="append", default=[], metavar="FILE",
                        help="a claims file read beside the packaged claims and the plugins' (repeatable)")
    _add_store(board)

    data = sub.add_parser("data", help="fetch datasets into the data root, or check what is there")
    data_sub = data.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download datasets (checksums verified); manual ones say how")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="adult, compas, german, fitzpatrick, ...")
    check = data_sub.add_parser("check", help="per dataset: present / missing / corrupt, and how to get it")
    check.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    for p in (fetch, check):
        p.add_argument("--data-root", default=None, help="dataset folder (default: $FAIRSQUEEZE_DATA or ./data)")

    launch = sub.add_parser("launch", help="submit N workers of a suite as one job array (SLURM or local), "
                                           "or show its progress with --status")
    launch.add_argument("suite")
    launch.add_argument("--status", action="store_true", help="show pending/running/done/failed runs and trials")
    launch.add_argument("--workers", type=int, default=1, help="number of workers (array size)")
    launch.add_argument("--executor", default="slurm", choices=["slurm", "local"])
    launch.add_argument("--partition", default=None, help="SLURM partition")
    launch.add_argument("--time", type=int, default=60, help="time limit per job, minutes")
    launch.add_argument("--cpus", type=int, default=1, help="CPUs per worker")
    launch.add_argument("--gpus", type=int, default=0, help="GPUs per worker")
    launch.add_argument("--mem", type=float, default=None, help="memory per worker, GB")
    launch.add_argument("--requeue", action="store_true", help="resubmit a preempted or timed-out job while work remains")
    launch.add_argument("--device", default="auto", help="the workers' device: auto, cpu or cuda[:N]")
    launch.add_argument("--data-root", default=None, help="dataset folder as the nodes see it")
    launch.add_argument("--logs", default=None, help="submitit's folder for job logs (default results/launch/SUITE)")
    _add_store(launch)
    return parser


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return jobs


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return seconds


def cmd_list(args) -> int:
    from fairsqueeze.cli.plugins import load_plugins

    load_plugins()
    if args.what == "tasks":
        from fairsqueeze.core.registry import TASKS

        for name in TASKS.names():
            print(f"{name:16s} {TASKS.get(name).description}")
    elif args.what == "models":
        from fairsqueeze.core.registry import MODELS

        for name in MODELS.names():
            print(f"{name:16s} {MODELS.get(name).description}")
    elif args.what == "methods":
        from fairsqueeze.core.registry import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:16s} [{cls.family}] {doc}")
    else:
        from fairsqueeze.spec.suite import bundled_suites

        print("\n".join(bundled_suites()))
    return 0


def cmd_fronts(args) -> int:
    from fairsqueeze.store.reader import open_store
    from fairsqueeze.reports.tuning_report import format_fronts

    print(format_fronts(open_store(args.db), args.suite))
    return 0


def cmd_show(args) -> int:
    from fairsqueeze.store.reader import open_store

    print_tables(open_store(args.db), args.suite, args.split)
    return 0


def _suite_name(text: str) -> str:
    """A bundled suite or a suite file stands for the name it declares."""
    from fairsqueeze.spec.suite import load_suite

    try:
        return load_suite(text).name
    except FairsqueezeError:
        return text


def cmd_report(args) -> int:
    from fairsqueeze.reports.data import load
    from fairsqueeze.reports.export import report_folder
    from fairsqueeze.reports.html import build_report

    from fairsqueeze.store.reader import open_store

    from fairsqueeze.core.files import check_writable

    name = _suite_name(args.suite)
    check_writable(args.out or report_folder(name), "--out", folder=True)
    results = load(open_store(args.db), name, args.split)
    results.claim_files = tuple(args.claims)
    if results.runs.empty:
        raise FairsqueezeError(f"no runs of suite {name!r} in {args.db}")
    page = build_report(results, name, args.out or report_folder(name))
    from fairsqueeze.reports.terminal import verdict_block
    from fairsqueeze.reports.verdicts import evaluation

    print(verdict_block(evaluation(results).table))  # computed for the page already: read from its cache
    print(f"report: {page}")
    return 0


def cmd_check_plugin(args) -> int:
    import json

    from fairsqueeze.core.errors import ConfigError
    from fairsqueeze.testing import check_conformance

    try:
        params = None if args.params is None else json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params: not valid JSON ({exc})") from None
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"--params: expected a JSON object, got {args.params!r}")
    report = check_conformance(args.name, params, device=args.device)
    print(report)
    if report:
        print(f"{args.name}: conforms")
        return 0
    failed = next((c for c in report.checks if c.passed is False), None)
    print(f"fairsqueeze: error: {args.name} does not conform: {failed.line() if failed else 'not every check ran'}",
          file=sys.stderr)
    return 1


def cmd_leaderboard(args) -> int:
    from fairsqueeze.leaderboard.site import build_leaderboard
    from fairsqueeze.reports.data import load

    from fairsqueeze.store.reader import open_store

    from fairsqueeze.core.files import check_writable

    check_writable(args.out, "--out", folder=True)
    results = load(open_store(args.db))
    results.claim_files = tuple(args.claims)
    print(f"leaderboard: {build_leaderboard(results, args.out)}")
    return 0


def cmd_data(args) -> int:
    """``data fetch``: 0 when every named dataset is complete; ``data check``: 0 unless a named
    dataset is not present or any checked one is corrupt."""
    from fairsqueeze.datasets.fetch import check, fetch, sources

    from fairsqueeze.datasets.base import data_root

    root = data_root(args.data_root)
    chosen = sources(args.names)
    if args.action == "fetch":
        complete = [fetch(source, root) for source in chosen]
        return 0 if all(complete) else 1
    statuses = [check(source, root) for source in chosen]
    print(f"data root: {root}")
    for status in statuses:
        print(status.line())
    corrupt = any(s.state == "corrupt" for s in statuses)
    return 1 if corrupt or (args.names and any(s.state != "present" for s in statuses)) else 0


def cmd_launch(args) -> int:
    from pathlib import Path

    import os

    from fairsqueeze.cli.launch import (Resources, WorkerJob, make_executor, print_jobs, submit, suite_status,
                                        without_password)
    from fairsqueeze.spec.suite import load_suite, resolve_suite_path

    if args.status:  # a suite file, a bundled suite or just the name it is stored under
        print("\n".join(suite_status(args.db, _suite_name(args.suite)).lines()))
        return 0
    from fairsqueeze.store.database import check_names, check_url

    check_url(args.db)
    suite = load_suite(args.suite)
    check_names(suite)
    for flag in ("workers", "time", "cpus"):
        if getattr(args, flag) < 1:
            raise FairsqueezeError(f"--{flag} {getattr(args, flag)}: expected a positive number")
    if args.gpus < 0 or (args.mem is not None and args.mem <= 0):
        raise FairsqueezeError("--gpus must be >= 0 and --mem > 0")
    if args.db.startswith("sqlite") and args.workers > 1:
        raise FairsqueezeError(f"--db {args.db}: SQLite allows one writer; several workers need PostgreSQL"
                               " (--db postgresql+psycopg://user@host/db, reachable from the nodes)")
    check_gpu_request(suite, args.device, gpus=args.gpus)
    path = resolve_suite_path(args.suite)
    data = str(Path(args.data_root).resolve()) if args.data_root else None
    db, password = without_password(args.db)
    if password:  # the jobs inherit this environment (SLURM exports it): the secret stays out of job files
        os.environ["PGPASSWORD"] = password
    job = WorkerJob(str(path.resolve()), db, args.device, data, args.requeue, suite.name)
    folder = Path(args.logs or f"results/launch/{suite.name}").resolve()
    resources = Resources(args.time, args.cpus, args.gpus, args.mem, args.partition)
    jobs = submit(job, args.workers, make_executor(args.executor, folder, resources, f"fairsqueeze-{suite.name}"))
    print_jobs(jobs, args.executor, folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # an argument error (one line, exit 2) or --help (exit 0)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    handlers = {"run": cmd_run, "worker": cmd_worker, "fronts": cmd_fronts, "list": cmd_list, "show": cmd_show,
                "report": cmd_report, "leaderboard": cmd_leaderboard, "check-plugin": cmd_check_plugin,
                "data": cmd_data, "launch": cmd_launch}
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if getattr(args, "jobs", 0) is None:
            from fairsqueeze.engine.jobs import default_jobs

            args.jobs = default_jobs()
        return handlers[args.command](args)
    except FairsqueezeError as exc:
        print(f"fairsqueeze: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a database failing mid-way is one line too; anything else is a bug
        from fairsqueeze.store.database import database_error, is_database_error

        if not is_database_error(exc):
            raise
        print(f"fairsqueeze: error: {database_error(getattr(args, 'db', ''), exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print("fairsqueeze: terminated (SIGTERM); job processes stopped, finished runs are saved, rerun to resume",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("fairsqueeze: interrupted; finished runs are saved, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
