"""The planning check: before the long work, run the suite's first seed and name every
compressed entry that changed no prediction on a cell (the engine's ``no_effect`` flag: the
same val and test predictions as the dense model). Such an entry tests no claim there: a
rank above what the layer uses, a head that compression does not cut.

The smoke seed's runs are the suite's own runs, stored as usual, so the rest of the suite
skips them: the check costs the order of the work, not extra work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from fairsqueeze.engine.jobs import interleaved
from fairsqueeze.engine.plan import Plan


@dataclass(frozen=True)
class NoOp:
    label: str  # the method entry's label
    task: str  # the task's table title
    model: str

    def line(self) -> str:
        return f"{self.label} on {self.task}, {self.model}: no prediction differs from the dense model's"


def smoke_check(runner, plan: Plan, jobs: int = 1, report=None) -> list[NoOp]:
    """Compute (and store) the first seed's pending fixed runs, counted in ``report`` (a
    ``RunReport``) when given; return the entries flagged ``no_effect`` there. The dense
    reference itself is not an entry that should change anything."""
    seed = plan.suite.seeds[0]
    runs = [r for r in plan.runs if r.seed == seed]
    runner.record_membership(plan, plan.runs)
    done = runner.store.keys_with_status([r.key for r in runs], "done")
    pending = list({r.key: r for r in runs if r.key not in done}.values())
    if pending:
        from fairsqueeze.engine.runner import RunReport

        report = report if report is not None else RunReport()
        started = time.perf_counter()
        runner.compute(plan, interleaved(pending), jobs, report)
        report.seconds["total"] += time.perf_counter() - started
    stored = runner.store.runs_frame(keys=[r.key for r in runs]).set_index("key")["flags"]
    out = []
    for r in runs:
        if r.method.name == "dense" and not r.method.post:
            continue
        flags = stored.get(r.key)
        if isinstance(flags, list) and "no_effect" in flags:
            out.append(NoOp(r.method.label, plan.labels[r.task.key], r.model.label))
    return list(dict.fromkeys(out))
