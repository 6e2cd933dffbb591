"""The ``fairsqueeze`` command line: run suites, list registries, show results."""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import FairsqueezeError

log = logging.getLogger("fairsqueeze")


def _add_store(p: argparse.ArgumentParser) -> None:
    from .store import DEFAULT_URL

    p.add_argument("--db", default=DEFAULT_URL, help=f"SQLAlchemy database URL (default {DEFAULT_URL})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairsqueeze", description=__doc__)
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
    _add_store(run)

    worker = sub.add_parser(
        "worker", help="take a suite's pending runs and tuning trials from the database until none remain"
    )
    worker.add_argument("suite")
    worker.add_argument("--data-root", default=None, help="dataset folder (default: $FAIRSQUEEZE_DATA or ./data)")
    worker.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    worker.add_argument("--quiet", action="store_true", help="no summary at the end")
    worker.add_argument("--skip-missing-data", action="store_true", help="skip tasks whose files are absent")
    worker.add_argument("--heartbeat", type=float, default=None,
                        help="lease renewal interval, seconds (a lease lasts three); an expired lease is taken over")
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
    _add_store(report)

    board = sub.add_parser("leaderboard", help="write the HTML leaderboard of every stored task and model")
    board.add_argument("--out", default="results/leaderboard", help="output folder (default results/leaderboard)")
    _add_store(board)
    return parser


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return jobs


def _planned(args):
    """The suite, its plan and the device: everything checked before a database is opened."""
    from .plan import plan_suite
    from .progress import set_quiet
    from .registry_loader import load_plugins
    from .runner import resolve_device
    from .suite import load_suite
    from .tasks import data_root

    set_quiet(args.quiet)
    load_plugins()
    suite = load_suite(args.suite)
    device = resolve_device(args.device)
    import torch

    from .jobs import compute_threads

    torch.set_num_threads(compute_threads(device))  # as in every --jobs process: results do not depend on N
    return suite, plan_suite(suite, data_root(args.data_root), args.skip_missing_data), device


def cmd_run(args) -> int:
    """Fixed runs in ``--jobs`` processes, then the tuned entries' studies and selected runs."""
    from .runner import Runner
    from .store import Store, sqlite_single_writer
    from .tasks import data_root
    from .worker import Worker

    suite, plan, device = _planned(args)
    with sqlite_single_writer(args.db):
        runner = Runner(Store(args.db), data_root(args.data_root), device, args.skip_missing_data)
        report = runner.run(plan, jobs=args.jobs)
        work = Worker(runner).run(plan, jobs=args.jobs) if plan.studies else None
    failed = report.failed + (work.failed if work else [])
    if not args.quiet:
        print(f"suite {suite.name}: {report.done} run(s) done, {report.skipped} already done, {len(report.failed)} failed")
        if work:
            print(f"tuning: {work.trials} trial(s) and {work.runs} selected run(s) done, {work.failed_trials} trial(s)"
                  f" failed (retried in their slots), {len(work.failed)} run(s) failed")
        if report.missing_tasks:
            print(f"skipped for missing data: {', '.join(report.missing_tasks)}")
        if report.flagged:
            print(f"{len(report.flagged)} run(s) flagged (degenerate: constant predictions; no_effect: same"
                  " predictions as the dense model); see the flags column")
        _print_tables(runner.store, suite.name, "test")
        if work:
            from .tuning_report import format_fronts

            print(format_fronts(runner.store, suite.name))
    if failed:
        _print_failures(runner.store, suite.name, failed)
        return 1
    return 0


def _print_failures(store, suite: str, keys: list[str]) -> None:
    from .results import suite_runs

    members = suite_runs(store, suite)
    failed = members[members["run_key"].isin(keys)].drop_duplicates("run_key")
    print(f"fairsqueeze: {len(keys)} run(s) failed (full tracebacks are stored with the runs):", file=sys.stderr)
    for _, row in failed.iterrows():
        first = (row["error"] or "").splitlines()[0] if isinstance(row["error"], str) else ""
        print(f"  {row['label']} on {row['task_label']}, {row['model']}, seed {row['seed']}: {first}", file=sys.stderr)


def _print_tables(store, suite: str | None, split: str) -> None:
    from fairsqueeze.reports.data import load
    from fairsqueeze.reports.tables import comparisons
    from fairsqueeze.reports.terminal import NOTE, headline_block

    from .biascard import format_bias_card

    for name in [suite] if suite else store.suite_names():
        results = load(store, name, split)
        tables = comparisons(results.done())
        if not tables:
            print(f"suite {name}: no finished runs")
            continue
        dense = results.dense.set_index("key")
        members = results.runs[results.runs["method"] == "dense"]
        for comp in tables:
            print("\n" + headline_block(comp, split, name))
            shown = members[(members["task_key"] == comp.task_key) & (members["model"] == comp.model)]
            for _, row in shown.sort_values("seed").head(1).iterrows():
                if row["dense_key"] in dense.index:
                    print(f"\n-- bias card: {comp.task_label}, dense {row['model']} (seed {row['seed']}) --")
                    print(format_bias_card(dense.loc[row["dense_key"], "bias_card"]))
        print("\n" + NOTE)


def cmd_list(args) -> int:
    from .registry_loader import load_plugins

    load_plugins()
    if args.what == "tasks":
        from .tasks import TASKS

        for name in TASKS.names():
            print(f"{name:16s} {TASKS.get(name).description}")
    elif args.what == "models":
        from .models import MODELS

        for name in MODELS.names():
            print(f"{name:16s} {MODELS.get(name).description}")
    elif args.what == "methods":
        from fairsqueeze.methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:16s} [{cls.family}] {doc}")
    else:
        from .suite import bundled_suites

        print("\n".join(bundled_suites()))
    return 0


def cmd_worker(args) -> int:
    """Execute a suite's pending work through the database; several may run at once on PostgreSQL."""
    from .runner import Runner
    from .store import Store, sqlite_single_writer
    from .tasks import data_root
    from .worker import HEARTBEAT_S, Worker

    suite, plan, device = _planned(args)
    with sqlite_single_writer(args.db):
        runner = Runner(Store(args.db), data_root(args.data_root), device, args.skip_missing_data)
        report = Worker(runner, heartbeat_s=args.heartbeat or HEARTBEAT_S).run(plan)
    if not args.quiet:
        print(f"suite {suite.name}: this worker did {report.runs} run(s) and {report.trials} trial(s);"
              f" {len(report.failed)} run(s) and {report.failed_trials} trial(s) failed")
        if report.missing_tasks:
            print(f"skipped for missing data: {', '.join(sorted(set(report.missing_tasks)))}")
    if report.failed:
        print(f"fairsqueeze: {len(report.failed)} run(s) failed; errors are in the store (runs.error)", file=sys.stderr)
        return 1
    return 0


def cmd_fronts(args) -> int:
    from .store import Store
    from .tuning_report import format_fronts

    print(format_fronts(Store(args.db, read_only=True), args.suite))
    return 0


def cmd_show(args) -> int:
    from .store import Store

    _print_tables(Store(args.db, read_only=True), args.suite, args.split)
    return 0


def _suite_name(text: str) -> str:
    """A bundled suite or a suite file stands for the name it declares."""
    from .suite import load_suite

    try:
        return load_suite(text).name
    except FairsqueezeError:
        return text


def cmd_report(args) -> int:
    from fairsqueeze.reports.data import load
    from fairsqueeze.reports.html import build_report

    from .store import Store

    name = _suite_name(args.suite)
    results = load(Store(args.db, read_only=True), name, args.split)
    if results.runs.empty:
        raise FairsqueezeError(f"no runs of suite {name!r} in {args.db}")
    print(f"report: {build_report(results, name, args.out or f'results/reports/{name}')}")
    return 0


def cmd_leaderboard(args) -> int:
    from fairsqueeze.leaderboard.site import build_leaderboard
    from fairsqueeze.reports.data import load

    from .store import Store

    print(f"leaderboard: {build_leaderboard(load(Store(args.db, read_only=True)), args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "jobs", 0) is None:
        from .jobs import default_jobs

        args.jobs = default_jobs()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    handlers = {"run": cmd_run, "worker": cmd_worker, "fronts": cmd_fronts, "list": cmd_list, "show": cmd_show,
                "report": cmd_report, "leaderboard": cmd_leaderboard}
    try:
        return handlers[args.command](args)
    except FairsqueezeError as exc:
        print(f"fairsqueeze: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a database failing mid-way is one line too; anything else is a bug
        from .store import database_error, is_database_error

        if not is_database_error(exc):
            raise
        print(f"fairsqueeze: error: {database_error(getattr(args, 'db', ''), exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fairsqueeze: interrupted; finished runs are saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
