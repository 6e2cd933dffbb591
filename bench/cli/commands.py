"""The commands that compute (``run`` and ``worker``), as functions of their parsed
arguments: below the command line, so ``launch`` can start a worker in a job's process."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fairsqueeze.core.errors import FairsqueezeError


def check_gpu_request(suite, device: str, gpus: int | None = None) -> None:
    """A suite that declares ``needs_gpu`` refuses to start without one unless ``--device cpu``
    says so: on this machine (run, worker) or in the jobs' request (launch, ``gpus``)."""
    if not suite.needs_gpu or device == "cpu":
        return
    if gpus is None:
        import torch

        if torch.cuda.is_available():
            return
        why, fix = "CUDA is not available on this machine", ""
    elif gpus > 0:
        return
    else:
        why, fix = "the jobs ask for none (--gpus 0)", "ask for --gpus 1, or "
    raise FairsqueezeError(f"suite {suite.name} needs a GPU and {why}; {fix}pass --device cpu to run it on the CPU"
                           " anyway")


def _check_definition(store, suite, args) -> None:
    """A suite name stands for one definition: refuse another one unless --redefine says so."""
    from fairsqueeze.engine.runner import suite_definition

    previous = store.check_definition(suite.name, suite_definition(suite), args.redefine)
    if previous and not args.quiet:
        print(f"suite {suite.name}: new definition recorded; the runs of the previous one are suite {previous}")


def _planned(args):
    """The suite, its plan and the device: everything checked before a database is opened."""
    from fairsqueeze.engine.plan import plan_suite
    from fairsqueeze.core.progress import set_quiet
    from fairsqueeze.cli.plugins import load_plugins
    from fairsqueeze.engine.runner import resolve_device
    from fairsqueeze.spec.suite import load_suite
    from fairsqueeze.datasets.base import data_root

    from fairsqueeze.core.files import check_writable
    from fairsqueeze.store.database import check_names, check_url

    set_quiet(args.quiet)
    check_url(args.db)
    if getattr(args, "timings", None):
        check_writable(args.timings, "--timings")
    from fairsqueeze.datasets.base import CACHE_ENV, cache_root

    check_writable(cache_root(), f"the cache folder (${CACHE_ENV} or results/cache)", folder=True)
    load_plugins()
    suite = load_suite(args.suite)
    check_names(suite)
    device = resolve_device(args.device)
    check_gpu_request(suite, args.device)
    import torch

    from fairsqueeze.engine.jobs import compute_threads

    torch.set_num_threads(compute_threads(device))  # as in every --jobs process: results do not depend on N
    return suite, plan_suite(suite, data_root(args.data_root), args.skip_missing_data), device


def cmd_run(args) -> int:
    """Fixed runs in ``--jobs`` processes, then the tuned entries' studies and selected runs."""
    from fairsqueeze.engine.runner import Runner, RunReport
    from fairsqueeze.store.database import Store, sqlite_single_writer
    from fairsqueeze.datasets.base import data_root
    from fairsqueeze.engine.worker import Worker

    from fairsqueeze.engine.jobs import cores

    suite, plan, device = _planned(args)
    if args.jobs > cores():
        logging.getLogger("fairsqueeze").warning(
            "--jobs %d is more than the %d cores this process may use: the processes share them", args.jobs, cores())
    with sqlite_single_writer(args.db):
        store = Store(args.db)
        _check_definition(store, suite, args)
        runner = Runner(store, data_root(args.data_root), device, args.skip_missing_data)
        smoke = None
        if getattr(args, "smoke_check", False) or getattr(args, "refuse_no_op", False):
            smoke = RunReport()
            if _smoke_refused(runner, plan, args, smoke):
                return 2
        report = runner.run(plan, jobs=args.jobs)
        if smoke is not None:  # the smoke seed's runs count as this call's, not as already done
            report.absorb(smoke)
        work = Worker(runner).run(plan, jobs=args.jobs) if plan.studies else None
    failed = report.failed + (work.failed if work else [])
    if args.timings:
        Path(args.timings).write_text(json.dumps(timings(report, args.jobs), indent=1), encoding="utf-8")
    if not args.quiet:
        print(f"suite {suite.name}: {report.done} run(s) done, {report.skipped} already done, {len(report.failed)} failed")
        if report.done:
            print(timing_line(timings(report, args.jobs)))
        if work:
            print(f"tuning: {work.trials} trial(s) and {work.runs} selected run(s) done, {work.failed_trials} trial(s)"
                  f" failed (retried in their slots), {len(work.failed)} run(s) failed")
        if report.missing_tasks:
            print(f"skipped for missing data: {', '.join(report.missing_tasks)}")
        if report.flagged:
            print(f"{len(report.flagged)} run(s) flagged (degenerate: constant predictions; no_effect: same"
                  " predictions as the dense model); see the flags column")
        print_tables(runner.store, suite.name, "test")
        if work:
            from fairsqueeze.reports.tuning_report import format_fronts

            print(format_fronts(runner.store, suite.name))
    if failed:
        _print_failures(runner.store, suite.name, failed)
        return 1
    return 0


def _smoke_refused(runner, plan, args, report) -> bool:
    """The planning check (``--smoke-check`` / ``--refuse-no-op``): the first seed first, then
    each entry that changed no prediction named on stderr; true when the suite must not go on."""
    from fairsqueeze.engine.jobs import default_jobs
    from fairsqueeze.engine.smoke import smoke_check

    no_ops = smoke_check(runner, plan, args.jobs or default_jobs(), report)
    for no_op in no_ops:
        print(f"smoke seed {plan.suite.seeds[0]}: {no_op.line()}", file=sys.stderr)
    if no_ops and args.refuse_no_op:
        print(f"refusing to run suite {plan.suite.name}: {len(no_ops)} entry(ies) changed no prediction on the"
              " smoke seed (see above); change them or run without --refuse-no-op", file=sys.stderr)
        return True
    return False


def timings(report, jobs: int | None) -> dict:
    """The fixed runs' wall time and phases: ``dense``, ``method`` and ``evaluation`` are
    process seconds summed over the job processes; ``outside`` is the wall time left once
    they are shared out among the processes (planning, the store, waiting)."""
    from fairsqueeze.engine.jobs import default_jobs

    jobs = jobs or default_jobs()
    s = report.seconds
    work = s["dense"] + s["method"] + s["evaluation"]
    return {"runs": report.done, "jobs": jobs, "wall_s": s["total"], "dense_s": s["dense"], "method_s": s["method"],
            "evaluation_s": s["evaluation"], "outside_s": max(s["total"] - work / jobs, 0.0)}


def timing_line(t: dict) -> str:
    return (f"{t['wall_s']:.0f} s of wall time with {t['jobs']} job(s); process time: dense models {t['dense_s']:.0f} s,"
            f" methods {t['method_s']:.0f} s, evaluation {t['evaluation_s']:.0f} s; outside them {t['outside_s']:.1f} s"
            " of wall time")


def cmd_worker(args) -> int:
    """Execute a suite's pending work through the database; several may run at once on PostgreSQL."""
    from fairsqueeze.engine.runner import Runner
    from fairsqueeze.store.database import Store, sqlite_single_writer
    from fairsqueeze.datasets.base import data_root
    from fairsqueeze.engine.worker import HEARTBEAT_S, Worker

    suite, plan, device = _planned(args)
    with sqlite_single_writer(args.db):
        store = Store(args.db)
        with store.lock():  # workers started together: one definition check at a time
            _check_definition(store, suite, args)
        runner = Runner(store, data_root(args.data_root), device, args.skip_missing_data)
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


def _print_failures(store, suite: str, keys: list[str]) -> None:
    from fairsqueeze.reports.results import suite_runs

    members = suite_runs(store, suite)
    failed = members[members["run_key"].isin(keys)].drop_duplicates("run_key")
    print(f"fairsqueeze: {len(keys)} run(s) failed (full tracebacks are stored with the runs):", file=sys.stderr)
    for _, row in failed.iterrows():
        first = (row["error"] or "").splitlines()[0] if isinstance(row["error"], str) else ""
        print(f"  {row['label']} on {row['task_label']}, {row['model']}, seed {row['seed']}: {first}", file=sys.stderr)


def print_tables(store, suite: str | None, split: str) -> None:
    from fairsqueeze.reports.data import load
    from fairsqueeze.reports.tables import comparisons
    from fairsqueeze.reports.terminal import NOTE, headline_block

    from fairsqueeze.measure.biascard import format_bias_card

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
