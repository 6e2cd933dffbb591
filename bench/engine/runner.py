"""Executes a planned suite's fixed runs and writes what they computed.

Every pending run is computed (in this process, or in ``jobs`` processes through
:mod:`fairsqueeze.engine.jobs`) and then written whole: its row, and its result or its error.
Computing is :mod:`fairsqueeze.engine.execute`'s job; the runner only orders and stores. Finished
runs are skipped; failed or interrupted ones are retried.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.engine.execute import Computed, Computer, run_row
from fairsqueeze.engine.jobs import compute_in_processes, interleaved
from fairsqueeze.engine.plan import Plan, plan_suite, suite_definition  # noqa: F401  (plan_suite: the runner's public API)
from fairsqueeze.core.progress import LogProgress, progress_bar
from fairsqueeze.store.database import Store
from fairsqueeze.spec.entries import RunSpec, Suite

log = logging.getLogger("fairsqueeze")

FLAG_MEANING = {"degenerate": "constant predictions on a split or a group", "no_effect": "the dense model's predictions"}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FairsqueezeError(f"--device {name}: CUDA is not available on this machine")
    if not (name == "cpu" or name.startswith("cuda")):
        raise FairsqueezeError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)
    flagged: dict[str, list[str]] = field(default_factory=dict)  # run key -> flags
    flag_runs: dict[str, list[str]] = field(default_factory=dict)  # flag -> what each flagged run showed
    # wall seconds by phase: dense (train or load + its predictions), method (apply),
    # evaluation (predictions, metrics, footprint, latency), total (the whole execution);
    # with several jobs the phases add up the processes' times
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("dense", "method", "evaluation", "total"), 0.0))

    def absorb(self, earlier: "RunReport") -> None:
        """Count an earlier batch of this call (the smoke seed's) as part of this report; its
        failed runs were retried by this one and count there."""
        self.done += earlier.done
        self.skipped -= earlier.done
        self.flagged.update(earlier.flagged)
        for name, seconds in earlier.seconds.items():
            self.seconds[name] += seconds

    @property
    def overhead(self) -> float:
        """Wall time outside dense training, method work and evaluation (store, bookkeeping)."""
        s = self.seconds
        return s["total"] - s["dense"] - s["method"] - s["evaluation"]


class Runner:
    def __init__(self, store: Store, data_root: Path, device: torch.device, skip_missing_data: bool = False):
        self.store = store
        self.data_root = Path(data_root)
        self.device = device
        self.skip_missing_data = skip_missing_data
        self.computer = Computer(device, self.data_root)

    def plan(self, suite: Suite) -> Plan:
        return plan_suite(suite, self.data_root, self.skip_missing_data)

    def run(self, suite_or_plan: Suite | Plan, jobs: int = 1) -> RunReport:
        """Every pending fixed run of the plan, computed by ``jobs`` processes (1: this one)."""
        plan = suite_or_plan if isinstance(suite_or_plan, Plan) else self.plan(suite_or_plan)
        report = RunReport(missing_tasks=list(plan.missing_tasks))
        started = time.perf_counter()
        try:
            self.record_membership(plan, plan.runs)
            done = self.store.keys_with_status([r.key for r in plan.runs], "done")
            pending = list({r.key: r for r in plan.runs if r.key not in done}.values())  # a computation runs once
            report.skipped = len(plan.runs) - len(pending)
            if pending:
                self.compute(plan, interleaved(pending), jobs, report)
            return report
        finally:
            report.seconds["total"] = time.perf_counter() - started

    def compute(self, plan: Plan, pending: list[RunSpec], jobs: int, report: RunReport,
                info: dict[str, dict] | None = None) -> None:
        """Compute ``pending`` (in ``jobs`` processes) and write each as it arrives; ``info`` (by
        run key) is stored with a result (e.g. what selected it). A run is written whole when
        it is done, so an interrupt leaves nothing half-written and a rerun computes the rest."""
        self.computer.tasks.update(plan.tasks)
        for key, task in plan.entry_tasks().items():
            self.store.put_task(key, task.name, {**task.summary(), "label": plan.labels[key]})
        info = info or {}
        jobs = min(jobs, len(pending))  # a process more than there are runs would only wait
        if jobs > 1:
            computed = compute_in_processes(pending, jobs, self.data_root, self.device, info, plan.tasks)
        else:
            computed = ((spec, self.computer.run(spec, info.get(spec.key))) for spec in pending)
        with (progress_bar(total=len(pending), desc=f"suite {plan.suite.name}", unit="run") as bar,
              LogProgress(len(pending), f"suite {plan.suite.name}") as lines):
            for spec, outcome in computed:
                bar.set_postfix_str(f"{spec.task.name}/{spec.model.name}/{spec.method.label}/s{spec.seed}")
                self.write(spec, outcome, plan, report)
                bar.update(1)
                lines.update(failed=int(outcome.result is None))
        for flag, runs in report.flag_runs.items():  # one line per flag, however many runs have it
            log.warning("%d run(s) flagged %s (%s); e.g. %s", len(runs), flag, FLAG_MEANING.get(flag, ""), runs[0])

    def run_one(self, spec: RunSpec, plan: Plan, info: dict | None = None) -> Computed:
        """Compute one run in this process and write it (what a worker does per run)."""
        self.computer.tasks.update(plan.tasks)
        computed = self.computer.run(spec, info)
        self.write(spec, computed, plan)
        return computed

    def write(self, spec: RunSpec, computed: Computed, plan: Plan, report: RunReport | None = None) -> None:
        """Store what a run computed: its dense reference's row once, then the run (replacing an
        earlier failed attempt) with its result or error."""
        label = plan.labels[spec.task.key]
        if computed.dense_row is not None:
            self.store.put_dense(spec.dense_key, computed.dense_row)
        if report is not None:
            report.seconds["dense"] += computed.dense_seconds
        row = run_row(spec, plan.tasks[spec.task_instance], label, self.device)
        self.store.start_run(spec.key, {**row, "started_at": computed.started_at})
        if computed.result is None:
            log.error("run %s (%s/%s/%s) failed: %s", spec.key, spec.task.name, spec.model.name, spec.method.label,
                      computed.error.splitlines()[0])
            self.store.fail_run(spec.key, computed.error)
            if report is not None:
                report.failed.append(spec.key)
            return
        result = computed.result
        self.store.finish_run(spec.key, result)
        for flag in result.flags:
            what = (f"run {spec.method.label} ({label}, {spec.model.label}, seed {spec.seed}):"
                    f" {(computed.details or {}).get(flag, '')}")
            if report is None:
                log.warning("%s is flagged %s", what, flag)
            else:  # folded into one line per flag when the batch ends
                report.flag_runs.setdefault(flag, []).append(what)
        if report is not None:
            report.done += 1
            if result.flags:
                report.flagged[spec.key] = result.flags
            report.seconds["method"] += result.timings.get("apply_s", 0.0)
            report.seconds["evaluation"] += result.timings.get("evaluate_s", 0.0)

    def record_membership(self, plan: Plan, runs: list[RunSpec]) -> None:
        """Make ``runs`` the suite's members (and store its definition), one process at a time."""
        suite = plan.suite
        with self.store.lock():
            self.store.put_suite(suite.name, suite.description, suite.source, suite_definition(suite))
            self.store.set_members(suite.name, plan.member_rows(runs), keep_tasks=plan.skipped_tasks)
