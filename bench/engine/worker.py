"""Workers: many processes (and machines) execute one suite through its database.

A worker takes what is pending in a suite, executes it and stops when nothing remains:

- **fixed runs** and **selected runs** (a tuned entry's configuration chosen by a policy:
  the selected trial's params and method seed, evaluated on val and test like any run);
- **studies**: a study's trials run one after another under one claim, so a study's result
  is the same for any number of workers; the parallelism comes from a suite's many studies
  and runs.

A claim is a lease in the store's ``work_items`` table (holder and expiry), taken in one
short transaction and renewed by a heartbeat thread while the work runs; no transaction or
connection stays open while the worker computes. A worker that dies stops renewing, and once
its lease expires the next worker takes the item over: a run is recomputed, a study's
running trial is marked failed and retried. An item that raised is retried by workers
started after the failure, not in a loop by the same one.

Trials are numbered by **slot** (their position in the study). A trial's method seed and its
sampler's seed derive from the study and the slot; a failed trial is retried in its slot with
the same params and seeds (at most ``MAX_TRIAL_ATTEMPTS`` attempts), and does not count
against the budget: the study runs until it has its budgeted number of complete trials. A
slot is started by inserting its row only while the study lacks complete trials (one
statement), so no interleaving of workers can overrun a budget.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import optuna
from optuna.study._tell import _tell_with_warning  # optuna is pinned (pyproject.toml)

from fairsqueeze.engine.execute import execute_trial
from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.core.hashing import config_hash
from fairsqueeze.engine.plan import Plan
from fairsqueeze.core.registry import create_method
from fairsqueeze.core.progress import BarAndLog, progress_bar
from fairsqueeze.engine.runner import RunReport
from fairsqueeze.spec.entries import MethodEntry, RunSpec, Suite
from fairsqueeze.engine.trials import derived_seed, record, suggested_params, trial_seed
from fairsqueeze.store.studies import trials_frame

log = logging.getLogger("fairsqueeze")


def trial_error(exc: BaseException) -> tuple[str, str]:
    """(one line, traceback) of a trial's failure."""
    return f"{type(exc).__name__}: {exc}", traceback.format_exc()

MAX_TRIAL_ATTEMPTS = 3  # attempts of one trial slot (a raised or abandoned attempt is retried)
HEARTBEAT_S = 10  # lease renewal interval; a lease lasts LEASE_BEATS intervals
LEASE_BEATS = 3
SHORT_TRIAL_S = 1.0  # after a trial this short, the next keeps the connections opened within this long
FAIL = optuna.trial.TrialState.FAIL

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_name(suite: Suite, spec: RunSpec) -> str:
    """One study per (suite, task, model, entry, seed); the hash ties it to what determines its trials."""
    ident = config_hash({"dense": spec.dense_key, "method": spec.method.name, "params": spec.method.params,
                         "tune": spec.method.tune.identity()})
    return f"{suite.name}/{spec.task.label}/{spec.model.label}/{spec.method.label}/s{spec.seed}/{ident[:8]}"


class Lease:
    """The lease on one work item, renewed by a background thread while the block runs."""

    def __init__(self, store, key: str, holder: str, heartbeat_s: float):
        self.store, self.key, self.holder = store, key, holder
        self.heartbeat_s = heartbeat_s
        self.failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {key[:24]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.store.renew(self.key, self.holder, self.heartbeat_s * LEASE_BEATS):
                    log.warning("lost the lease on %s (it expired and another worker took it)", self.key)
                    return
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("could not renew the lease on %s: %s", self.key, str(exc).splitlines()[0])

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release(self.key, self.holder, failed=self.failed or exc_info[0] is not None)


@dataclass
class Slot:
    """A trial slot's row (see the module's docstring)."""

    state: str  # running, complete, failed or abandoned
    trial: int | None  # the Optuna trial number of its latest attempt
    attempts: int


@dataclass
class WorkReport:
    runs: int = 0
    trials: int = 0
    failed_trials: int = 0
    failed: list[str] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)


class Worker:
    """Executes a planned suite's pending runs, trials and selected runs until none remain."""

    def __init__(self, runner, heartbeat_s: float = HEARTBEAT_S, poll_s: float = 0.25, name: str | None = None):
        self.runner = runner
        self.store = runner.store
        self.name = name or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.started = time.time()
        self.heartbeat_s = heartbeat_s
        with self.store.lock():  # workers started together create Optuna's tables one at a time
            self.storage = self.store.optuna_storage()
        self.poll_s = poll_s
        self._finished_studies: set[str] = set()
        self._studies: dict[str, optuna.Study] = {}
        self._info: dict[str, dict] = {}  # selected run key -> what selected it
        self._members: dict = {}
        self._slots: dict[str, dict[int, Slot]] = {}  # study -> its slots, while this worker leases it
        self._counted: set[str] = set()  # run keys already in the progress bar's total
        self._bar = progress_bar(disable=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged in one line below

    # -- the loop ---------------------------------------------------------------------------
    def run(self, plan: Plan, jobs: int = 1) -> WorkReport:
        """Everything pending; with ``jobs`` > 1, the studies' trials are computed in that many
        processes first (see :meth:`_studies_in_processes`), then the rest as usual."""
        report = WorkReport(missing_tasks=list(plan.missing_tasks))
        suite = plan.suite
        self.plan = plan
        for key, task in plan.entry_tasks().items():  # engine bookkeeping, outside any trial
            self.store.put_task(key, task.name, {**task.summary(), "label": plan.labels[key]})
        studies = {study_name(suite, s): s for s in plan.studies}
        self._specs = studies
        self.store.ensure_work({r.key: "run" for r in plan.runs} | {name: "study" for name in studies})
        for name, spec in studies.items():
            self._create_study(name, suite, spec)
        selected = self._selected_runs(studies)
        self._record_membership(selected)
        bar = progress_bar(total=0, desc=f"suite {suite.name}", unit="item")
        with BarAndLog(bar, f"suite {suite.name}", "item") as self._bar:
            self._count_pending(plan.runs + list(selected.values()), studies)
            if jobs > 1 and studies:
                try:
                    self._studies_in_processes(jobs, report)
                except BrokenProcessPool:  # the unfinished trials' slots stay open: a rerun computes them
                    raise FairsqueezeError("a job process computing trials was lost (killed, or out of memory);"
                                           " finished trials are kept, rerun to resume") from None
                selected = self._selected_runs(studies)
                self._record_membership(selected)
                self._count_pending(list(selected.values()), {})
                self._selected_in_processes(selected, jobs, report)
            while True:
                progressed, busy = self._round(plan, studies, selected, report)
                if progressed:
                    selected = self._selected_runs(studies)
                    self._count_pending(list(selected.values()), {})
                    if set(selected) - set(self._members):
                        self._record_membership(selected)
                    continue
                if not busy:
                    return report
                self.store.idle()  # nor while waiting for another worker
                time.sleep(self.poll_s)

    def _count_pending(self, runs: list[RunSpec], studies: dict[str, RunSpec]) -> None:
        """Add to the progress bar's total the runs not yet done (each once) and the trials the
        studies still lack; selected runs are added as policies choose them."""
        keys = {r.key for r in runs} - self._counted
        self._counted |= keys
        pending = len(keys - self.store.keys_with_status(list(keys), "done"))
        for name, spec in studies.items():
            complete = (self.store.slots(name)["state"] == "complete").sum()
            pending += max(0, spec.method.tune.trials - int(complete))
        self._bar.total += pending
        self._bar.refresh()

    def _round(self, plan, studies, selected, report) -> tuple[bool, bool]:
        """Do one item if one can be claimed. Returns (did something, something is held elsewhere)."""
        busy = False
        runs = list({r.key: r for r in plan.runs + list(selected.values())}.values())
        done = self.store.keys_with_status([r.key for r in runs], "done")
        for spec in runs:
            if spec.key in done:
                continue
            outcome = self._do_run(spec, report)
            if outcome is None:
                busy = True
            elif outcome:
                return True, busy
        for name, spec in studies.items():
            if name in self._finished_studies:
                continue
            outcome = self._do_study(plan.suite, name, spec, report)
            if outcome is None:
                busy = True
            elif outcome:
                return True, busy
        return False, busy

    def _record_membership(self, selected: dict[tuple[str, str], RunSpec]) -> None:
        """The suite's members: its fixed runs and, once chosen, its selected runs (labelled
        ``entry[policy]``)."""
        self.runner.record_membership(self.plan, self.plan.runs + list(selected.values()))
        self._members = dict(selected)

    def _claim(self, key: str) -> Lease | None:
        if not self.store.claim(key, self.name, self.heartbeat_s * LEASE_BEATS, failed_before=self.started):
            return None
        return Lease(self.store, key, self.name, self.heartbeat_s)

    # -- runs -------------------------------------------------------------------------------
    def _do_run(self, spec: RunSpec, report) -> bool | None:
        """True: executed; False: nothing to do; None: another worker holds it."""
        lease = self._claim(spec.key)
        if lease is None:
            return False if self.store.failed_since(spec.key, self.started) else None
        with lease:
            if spec.key in self.store.keys_with_status([spec.key], "done"):  # finished meanwhile
                return False
            self.store.idle()  # no server connection held while computing
            computed = self.runner.run_one(spec, self.plan, info=self._info.get(spec.key))
            if computed.result is None:
                lease.failed = True
                report.failed.append(spec.key)
            else:
                report.runs += 1
            self._bar.update(1)
            return True

    def _selected_runs(self, studies: dict[str, RunSpec]) -> dict[tuple[str, str], RunSpec]:
        """(study, policy) -> run spec of every configuration a policy has selected so far: the
        trial's params and method seed, so the run reproduces the trial."""
        out = {}
        for row in sorted(self.store.selection_rows(studies), key=lambda r: (r.study, r.policy)):
            if row.trial is None:
                continue
            base = studies[row.study]
            entry = MethodEntry(base.method.name, json.loads(row.params), row.label, base.method.models,
                                base.method.tasks, entry=base.method.entry, entry_label=base.method.label,
                                sweep={"policy": row.policy}, seed=row.method_seed, protect=base.method.protect)
            spec = RunSpec(base.task, base.model, entry, base.seed, base.data)
            out[(row.study, row.policy)] = spec
            chosen = self._info.setdefault(spec.key, {"selected": {"study": row.study, "trial": row.trial,
                                                                   "trials": row.trials, "split": "val",
                                                                   "seed": row.method_seed, "policies": []}})
            if row.policy not in chosen["selected"]["policies"]:
                chosen["selected"]["policies"].append(row.policy)
        if out:
            self.store.ensure_work({s.key: "run" for s in out.values()})
        return out

    # -- studies ----------------------------------------------------------------------------
    def _create_study(self, name: str, suite: Suite, spec: RunSpec) -> None:
        tune = spec.method.tune
        try:
            study = optuna.create_study(storage=self.storage, study_name=name, directions=tune.objectives.directions())
        except optuna.exceptions.DuplicatedStudyError:
            self._studies[name] = optuna.load_study(study_name=name, storage=self.storage)
            return
        attrs = {
            "suite": suite.name,
            "task": self.plan.labels[spec.task.key],
            "task_key": spec.task.key,
            "model": spec.model.label,
            "method": spec.method.name,
            "label": spec.method.label,
            "seed": spec.seed,
            "base_params": spec.method.params,
            "trials": tune.trials,
            "objectives": tune.objectives.names(),
            "sampler": {"name": tune.sampler.name, "seed": tune.sampler.seed, "options": tune.sampler.effective_options()},
            "accuracy_within": tune.accuracy_within,
            "policies": [p.label for p in tune.policies],
            "split": "val",
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        self._studies[name] = study

    def _do_study(self, suite, name: str, spec: RunSpec, report) -> bool | None:
        """Run a study's missing trials under one lease, then apply the selection policies.
        True: worked; None: another worker holds it."""
        lease = self._claim(name)
        if lease is None:
            return None
        with lease:
            self._read_slots(name)
            self._run_study(name, spec, report)
            self._select(suite, name, spec, self._studies[name])
            self._finished_studies.add(name)
            return True

    def _run_study(self, name: str, spec: RunSpec, report: WorkReport) -> None:
        """Trials, one after another in this process, until the study has its budget of
        complete ones."""
        computer = self.runner.computer
        computer.tasks.update(self.plan.tasks)
        reference, dense_row = computer.reference(spec)  # outside the sealed trial: it predicts on test too
        if dense_row is not None:
            self.store.put_dense(spec.dense_key, dense_row)
        while (started := self._begin_trial(name, spec, report)) is not None:
            trial, slot, params, seed = started
            # no server connection held while computing, except across a series of short trials
            # (of any study): reconnecting both engines, and re-preparing their statements on
            # the new connections, costs as much as Optuna's own ask and tell
            short = getattr(self, "_last_trial_s", math.inf) < SHORT_TRIAL_S
            self.store.idle(unless_within=SHORT_TRIAL_S if short else 0.0)
            computing = time.perf_counter()
            try:
                result = execute_trial(spec.method.name, params, seed, self.plan.tasks[spec.task_instance], reference,
                                       self.runner.device, spec.method.tune, spec.method.protect)
            except Exception as exc:
                self._end_trial(name, trial, slot, report, error=trial_error(exc))
            else:
                self._end_trial(name, trial, slot, report, result=result, params=params, seed=seed)
            self._last_trial_s = time.perf_counter() - computing

    def _read_slots(self, name: str) -> None:
        """Read a study's slots once its lease is taken: while this worker holds the lease, only
        it changes them, so the trials that follow keep the rows here instead of reading them."""
        self._slots[name] = {int(r.slot): Slot(r.state, None if r.trial is None else int(r.trial), int(r.attempts))
                             for r in self.store.slots(name).itertuples()}

    def _set_slot(self, name: str, slot: int, state: str, trial: int | None = None) -> None:
        self.store.set_slot(name, slot, state, trial)
        row = self._slots[name][slot]
        row.state = state
        if trial is not None:
            row.trial = trial

    def _next_slot(self, name: str, spec: RunSpec) -> tuple[int, dict | None] | None:
        """The next trial slot to attempt: (slot, params of the attempt it retries or None), or
        None when the study has its budget. A running slot found here belongs to a worker whose
        lease expired: it is failed and retried like a raised one."""
        study, tune, slots = self._studies[name], spec.method.tune, self._slots[name]
        for slot, row in sorted(slots.items()):
            if row.state == "running":
                self._fail_stale(study, name, slot, row)
        if sum(row.state == "complete" for row in slots.values()) >= tune.trials:
            return None
        for slot, row in sorted(slots.items()):
            if row.state != "failed":
                continue
            if self.store.retry_slot(name, slot, MAX_TRIAL_ATTEMPTS):
                row.state, row.attempts = "running", row.attempts + 1
                return slot, (study.trials[row.trial].params if row.trial is not None else {})
            self._set_slot(name, slot, "abandoned")
            log.warning("%s: trial slot %d failed %d times; abandoned", name, slot, row.attempts)
        if sum(row.state == "abandoned" for row in slots.values()) >= tune.trials:  # a method that keeps failing ends
            log.error("%s: %d trial slots abandoned; the study stops short of its budget", name, tune.trials)
            return None
        slot = len(slots)
        if not self.store.start_slot(name, slot, tune.trials):
            return None  # the budget is reached (or another worker took the slot)
        slots[slot] = Slot("running", None, 1)
        return slot, None

    def _fail_stale(self, study: optuna.Study, name: str, slot: int, row: Slot) -> None:
        if row.trial is not None:
            frozen = study.trials[row.trial]
            if frozen.state == optuna.trial.TrialState.RUNNING:
                study.tell(row.trial, state=FAIL)
        log.warning("%s: trial slot %d was left running by a worker that stopped; retrying it", name, slot)
        self._set_slot(name, slot, "failed")

    def _begin_trial(self, name: str, spec: RunSpec, report: WorkReport):
        """Ask the study for the next attempt: (trial, slot, params, method seed), or None when
        the study is done. The sampler and the method are seeded from the slot; a retry repeats
        the params of the attempt it replaces."""
        while (chosen := self._next_slot(name, spec)) is not None:
            slot, fixed = chosen
            study, sampler = self._studies[name], spec.method.tune.sampler
            study.sampler = sampler.build(seed=derived_seed(sampler.seed, name, slot))
            if fixed is not None:
                study.enqueue_trial(fixed, user_attrs={"slot": slot}, skip_if_exists=False)
            trial = study.ask()
            self._set_slot(name, slot, "running", trial.number)
            try:
                if fixed is None:
                    trial.set_user_attr("slot", slot)
                params = suggested_params(spec.method.name, spec.method.params, trial)
            except Exception as exc:
                self._end_trial(name, trial, slot, report, error=trial_error(exc))
                continue
            return trial, slot, params, trial_seed(name, slot)
        return None

    def _end_trial(self, name: str, trial, slot: int, report: WorkReport, result=None, params=None, seed=None,
                   error: tuple[str, str] | None = None) -> None:
        """Tell the study how an attempt ended: its values, or a failure (one logged line; the
        traceback kept on the trial) that is retried in its slot."""
        study = self._studies[name]
        if error is None:
            try:
                record(trial, result, create_method(self._specs[name].method.name, params).param_dict(), seed)
            except Exception as exc:
                error = trial_error(exc)
        if error is not None:
            line, trace = error
            trial.set_user_attr("error", trace)
            log.warning("%s: trial %d (slot %d) failed: %s", name, trial.number, slot, line)
            study.tell(trial, state=FAIL)
            self._set_slot(name, slot, "failed")
            report.failed_trials += 1
            return
        # Study.tell, less the copy of the finished trial it reads back and returns (a query
        # per trial that nothing here uses): what Optuna's own optimize loop calls
        _tell_with_warning(study, trial, result.values)
        self._set_slot(name, slot, "complete")
        report.trials += 1
        self._bar.update(1)

    def _studies_in_processes(self, jobs: int, report: WorkReport) -> None:
        """Every study this worker can lease, with ``jobs`` processes computing trials: the
        trials of one study still run one after another (its next trial is asked once its
        previous one is told), different studies' trials at the same time. This process asks,
        tells and writes; the processes only compute."""
        from fairsqueeze.engine.jobs import process_pool, trial_in_process

        plan, names = self.plan, self._specs
        jobs = min(jobs, len(names))  # one trial of a study at a time: more processes would wait
        with contextlib.ExitStack() as held, process_pool(jobs, self.runner.data_root, self.runner.device,
                                                                  plan.tasks) as pool:
            running = {}

            def launch(name: str) -> None:
                spec = names[name]
                started = self._begin_trial(name, spec, report)
                if started is None:
                    self._select(plan.suite, name, spec, self._studies[name])
                    self._finished_studies.add(name)
                    return
                trial, slot, params, seed = started
                future = pool.submit(trial_in_process, spec, params, seed)
                running[future] = (name, trial, slot, params, seed)

            for name in names:
                if name in self._finished_studies:
                    continue
                lease = self._claim(name)
                if lease is not None:
                    held.enter_context(lease)
                    self._read_slots(name)
                    launch(name)
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name, trial, slot, params, seed = running.pop(future)
                    result, error, dense_row = future.result()
                    if dense_row is not None:
                        self.store.put_dense(names[name].dense_key, dense_row)
                    self._end_trial(name, trial, slot, report, result=result, params=params, seed=seed, error=error)
                    launch(name)

    def _selected_in_processes(self, selected: dict, jobs: int, report: WorkReport) -> None:
        """The selected runs not yet done, computed in ``jobs`` processes and written here."""
        specs = {s.key: s for s in selected.values()}
        pending = [s for key, s in specs.items() if key not in self.store.keys_with_status(list(specs), "done")]
        if not pending:
            return
        done = RunReport()
        self.runner.compute(self.plan, pending, jobs, done, info=self._info)
        report.runs += done.done
        report.failed += done.failed
        self._bar.update(len(pending))

    def _select(self, suite: Suite, name: str, spec: RunSpec, study: optuna.Study) -> None:
        """Apply every policy of the entry to the complete trials and store the choices."""
        frame = trials_frame(study)
        have = {r.policy for r in self.store.selection_rows([name])}
        seeds = {t.number: t.user_attrs.get("result", {}).get("seed") for t in study.get_trials(deepcopy=False)}
        rows = []
        for policy in spec.method.tune.policies:
            if policy.label in have:
                continue
            number = policy.select(frame) if not frame.empty else None
            params = frame.set_index("number").loc[number, "params"] if number is not None else None
            label = f"{spec.method.label}[{policy.label}]"
            run_key, seed = None, None
            if params is not None:
                seed = seeds[number]
                entry = MethodEntry(spec.method.name, params, label, seed=seed, protect=spec.method.protect)
                run_key = RunSpec(spec.task, spec.model, entry, spec.seed, spec.data).key
            else:
                log.warning("study %s: no trial qualifies for policy %s", name, policy.label)
            rows.append({"study": name, "policy": policy.label, "suite": suite.name, "label": label, "trial": number,
                         "params": json.dumps(params) if params is not None else None, "run_key": run_key,
                         "method_seed": seed, "trials": spec.method.tune.trials})
        if rows:
            self.store.put_selections(rows)
