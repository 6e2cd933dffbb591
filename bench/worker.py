"""Workers: many processes (and machines) execute one suite through its database.

A worker takes what is pending in a suite, executes it and stops when nothing remains:

- **fixed runs** and **selected runs** (a tuned entry's configuration chosen by a policy, then
  evaluated on val and test like any run). A worker claims one by locking its row in
  ``work_items`` with ``SELECT ... FOR UPDATE SKIP LOCKED`` and keeps that transaction open
  while it works. If the worker dies, the database ends its session and the lock with it, so
  another worker takes the run at once. A run that raised is not tried again in the same
  worker session; workers started after the failure retry it.
- **tuning trials**, through Optuna. The study's row in ``work_items`` is locked the same way
  while its trials run, so the trials of a study run one after another (a study's
  result is then the same for any number of workers; the parallelism comes from the many
  studies and runs of a suite). A running trial records Optuna heartbeats
  (``heartbeat_interval``); when its worker dies, the next worker to look at the study fails
  it once the grace period has passed (``fail_stale_trials``) and Optuna's
  ``RetryHeartbeatStaleTrialCallback`` enqueues it again with the same parameters, as a
  waiting trial that the next ``study.optimize`` pops.

SQLite has no row locks and one writer at a time: one worker per SQLite file is allowed (a
file lock enforces it, with a clear message); use PostgreSQL for several.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import logging
import os
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import optuna
import torch
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, create_engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from .errors import FairsqueezeError
from .hashing import config_hash
from .progress import progress_bar
from .runner import suite_definition
from .suite import MethodEntry, RunSpec, Suite
from .tasks import sealed_test_split, test_split_violations
from .tuning import derived_seed, record, retried_number, score_on_validation, trial_seed, trials_frame

log = logging.getLogger("fairsqueeze")

MAX_TRIAL_RETRIES = 3  # a trial whose worker died is re-enqueued at most this many times
HEARTBEAT_S = 10  # Optuna heartbeat interval of a running trial (seconds)
DB_LOCK_KEY = 0x66737164  # advisory-lock id under which workers create the tables
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)

# heartbeats, stale-trial failure and the retry callback are marked experimental by Optuna
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

work_meta = MetaData()

work_items = Table(
    "work_items",
    work_meta,
    Column("key", String(512), primary_key=True),  # a run key or a study name
    Column("kind", String(8), nullable=False),  # run | study
    Column("worker", String(64)),
    Column("failed_at", Float),  # the last attempt raised at this time
    Column("claimed_at", Float),
)

selections = Table(
    "selections",
    work_meta,
    Column("study", String(512), primary_key=True),
    Column("policy", String(128), primary_key=True),
    Column("suite", String(128), nullable=False),
    Column("label", String(512), nullable=False),  # the selected run's label in the suite
    Column("trial", Integer),  # None: no trial qualified
    Column("params", Text),
    Column("run_key", String(64)),
    Column("trials", Integer, nullable=False),  # the study's budget
)


def study_name(suite: Suite, spec: RunSpec) -> str:
    """One study per (suite, task, model, entry, seed); the hash ties it to what determines its trials."""
    ident = config_hash({"dense": spec.dense_key, "method": spec.method.name, "params": spec.method.params,
                         "tune": spec.method.tune.identity()})
    return f"{suite.name}/{spec.task.label}/{spec.model.label}/{spec.method.label}/s{spec.seed}/{ident[:8]}"


def optuna_storage(url: str, heartbeat_interval: int = HEARTBEAT_S, grace_period: int | None = None):
    """Optuna's RDB storage on the engine's database, with heartbeats and stale-trial retries."""
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_TRIAL_RETRIES),
    )


@contextlib.contextmanager
def db_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process at a time in the block (a session advisory lock): workers
    that start together create tables, and replace a suite's membership, in turn. Elsewhere a
    no-op (SQLite has one worker)."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": DB_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": DB_LOCK_KEY})
            conn.commit()
    engine.dispose()


@contextlib.contextmanager
def sqlite_single_worker(url: str) -> Iterator[None]:
    """Hold an exclusive file lock beside a SQLite database for as long as one process works on it."""
    path = url.removeprefix("sqlite:///")
    if not url.startswith("sqlite:///") or path in ("", ":memory:"):
        yield
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{path}.worker-lock", "w")
    except OSError:  # an unusable path: opening the store reports it in one line
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FairsqueezeError(
                f"another fairsqueeze process is already working on {path}: SQLite allows one worker at a"
                " time; for several workers use a PostgreSQL URL (--db postgresql://user@host/dbname)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise processes of one machine (e.g. two workers training the same dense reference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Claims:
    """Row locks on ``work_items``: a claim lives as long as the transaction that holds it."""

    def __init__(self, engine, worker: str):
        self.engine = engine
        self.worker = worker
        self.started = time.time()
        self.locking = engine.dialect.name != "sqlite"  # SQLite: one worker, enforced by a file lock
        work_meta.create_all(engine)

    def ensure(self, items: dict[str, str]) -> None:
        """Insert the missing (key -> kind) rows; concurrent inserts of the same key are harmless."""
        for _ in range(3):
            with self.engine.connect() as conn:
                have = {r[0] for r in conn.execute(select(work_items.c.key).where(work_items.c.key.in_(list(items))))}
            missing = [{"key": k, "kind": v} for k, v in items.items() if k not in have]
            if not missing:
                return
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(work_items), missing)
                return
            except IntegrityError:  # another worker inserted some of them first: read again
                continue

    @contextlib.contextmanager
    def hold(self, key: str):
        """Yield a :class:`Claim` on ``key``, or None when another worker holds it or it failed
        since this worker started (a failed item is retried by the next worker session only)."""
        conn = self.engine.connect()
        transaction = conn.begin()
        try:
            query = select(work_items).where(work_items.c.key == key)
            if self.locking:
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None or (row.failed_at is not None and row.failed_at >= self.started):
                transaction.rollback()
                yield None
                return
            conn.execute(update(work_items).where(work_items.c.key == key).values(worker=self.worker, claimed_at=time.time()))
            if not self.locking:  # SQLite: never keep a write transaction open while working
                transaction.commit()
            claim = Claim()
            yield claim
            if not self.locking:
                transaction = conn.begin()
            conn.execute(update(work_items).where(work_items.c.key == key).values(failed_at=claim.failed_at))
            transaction.commit()
        finally:
            if transaction.is_active:
                transaction.rollback()
            conn.close()

    def failed_since_start(self, key: str) -> bool:
        with self.engine.connect() as conn:
            failed_at = conn.execute(select(work_items.c.failed_at).where(work_items.c.key == key)).scalar()
        return failed_at is not None and failed_at >= self.started


@dataclass
class Claim:
    failed_at: float | None = None

    def failed(self) -> None:
        self.failed_at = time.time()


@dataclass
class WorkReport:
    runs: int = 0
    trials: int = 0
    failed: list[str] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)


class Worker:
    """Executes a planned suite's pending runs, trials and selected runs until none remain."""

    def __init__(self, runner, heartbeat_interval: int = HEARTBEAT_S, grace_period: int | None = None,
                 poll_s: float = 0.25, name: str | None = None):
        self.runner = runner
        self.store = runner.store
        self.name = name or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        with db_lock(self.store.url):
            self.storage = optuna_storage(self.store.url, heartbeat_interval, grace_period)
            self.claims = Claims(self.store.engine, self.name)
        self.poll_s = poll_s
        self._references: dict[str, object] = {}
        self._finished_studies: set[str] = set()
        self._studies: dict[str, optuna.Study] = {}
        self._info: dict[str, dict] = {}  # selected run key -> what selected it
        self._counted: set[str] = set()  # run keys already in the progress bar's total
        self._bar = progress_bar(disable=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged in one line below

    # -- the loop ---------------------------------------------------------------------------
    def run(self, plan) -> WorkReport:
        report = WorkReport(missing_tasks=list(plan.missing_tasks))
        suite = plan.suite
        self.plan = plan
        for key, task in plan.tasks.items():  # engine bookkeeping, outside any trial
            with contextlib.suppress(IntegrityError):
                self.store.put_task(key, task.name, {**task.summary(), "label": plan.labels[key]})
        studies = {study_name(suite, s): s for s in plan.studies}
        self.claims.ensure({r.key: "run" for r in plan.runs} | {name: "study" for name in studies})
        for name, spec in studies.items():
            self._create_study(name, suite, spec)
        selected = self._selected_runs(studies)
        self._record_membership(selected)
        with progress_bar(total=0, desc=f"suite {suite.name}", unit="item") as self._bar:
            self._count_pending(plan.runs + list(selected.values()), studies)
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
                time.sleep(self.poll_s)

    def _count_pending(self, runs: list[RunSpec], studies: dict[str, RunSpec]) -> None:
        """Add to the progress bar's total the runs not yet done (each once) and the trials the
        studies still lack; selected runs are added as policies choose them."""
        keys = {r.key for r in runs} - self._counted
        self._counted |= keys
        pending = len(keys - self.store.keys_with_status(list(keys), "done"))
        for name, spec in studies.items():
            finished = self._studies[name].get_trials(deepcopy=False, states=FINISHED)
            pending += max(0, spec.method.tune.trials - len(finished))
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

    def _record_membership(self, selected: dict[str, RunSpec]) -> None:
        """The suite's members: its fixed runs and, once chosen, its selected runs (labelled
        ``entry[policy]``). Workers write it one at a time."""
        plan = self.plan
        rows = [
            {"task_key": r.task.key, "model": r.model.label, "label": r.method.label, "seed": r.seed,
             "run_key": r.key, "entry": r.method.entry, "entry_label": r.method.entry_label, "sweep": r.method.sweep}
            for r in plan.runs + list(selected.values())
        ]
        skipped = {t.key for t in plan.suite.tasks if t.key not in plan.tasks}
        with db_lock(self.store.url):
            self.store.put_suite(plan.suite.name, plan.suite.description, plan.suite.source,
                                 suite_definition(plan.suite))
            self.store.set_members(plan.suite.name, rows, keep_tasks=skipped)
        self._members = dict(selected)

    # -- runs -------------------------------------------------------------------------------
    def _do_run(self, spec: RunSpec, report) -> bool | None:
        """True: executed; False: nothing to do; None: another worker holds it."""
        with self.claims.hold(spec.key) as claim:
            if claim is None:
                return False if self.claims.failed_since_start(spec.key) else None
            if spec.key in self.store.keys_with_status([spec.key], "done"):  # finished meanwhile
                return False
            task, label = self.plan.tasks[spec.task.key], self.plan.labels[spec.task.key]
            try:
                reference = self._reference(spec)
            except Exception as exc:  # the run fails with its reference; the suite goes on
                log.error("dense reference %s on %s failed: %s", spec.model.label, label, exc)
                self.store.start_run(spec.key, self.runner._run_row(spec, task, label))
                self.store.fail_run(spec.key, f"dense reference failed: {type(exc).__name__}: {exc}")
                result = None
            else:
                result = self.runner.run_one(spec, task, label, reference, info=self._info.get(spec.key))
            if result is None:
                claim.failed()
                report.failed.append(spec.key)
            else:
                report.runs += 1
            self._bar.update(1)
            return True

    def _selected_runs(self, studies: dict[str, RunSpec]) -> dict[str, RunSpec]:
        """(study, policy) -> run spec of every configuration a policy has selected so far."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(selections).where(selections.c.study.in_(list(studies)))).all()
        out = {}
        for row in sorted(rows, key=lambda r: (r.study, r.policy)):
            if row.trial is None:
                continue
            base = studies[row.study]
            entry = MethodEntry(base.method.name, json.loads(row.params), row.label, base.method.models,
                                base.method.tasks, entry=base.method.entry, entry_label=base.method.label,
                                sweep={"policy": row.policy})
            spec = RunSpec(base.task, base.model, entry, base.seed, base.data)
            out[(row.study, row.policy)] = spec
            chosen = self._info.setdefault(spec.key, {"selected": {"study": row.study, "trial": row.trial,
                                                                   "trials": row.trials, "split": "val",
                                                                   "policies": []}})
            if row.policy not in chosen["selected"]["policies"]:
                chosen["selected"]["policies"].append(row.policy)
        if out:
            self.claims.ensure({s.key: "run" for s in out.values()})
        return out

    # -- trials -----------------------------------------------------------------------------
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
        """Run a study's remaining trials under one claim, then apply the selection policies.

        The claim is taken once per visit, not once per trial: a study's trials run one after
        another anyway, and every claim, stale-trial check and trial listing is a database round
        trip that a trial would otherwise pay. True: worked; None: another worker holds it, or
        a trial of a dead worker awaits the end of its heartbeat grace period."""
        with self.claims.hold(name) as claim:
            if claim is None:
                return None
            tune = spec.method.tune
            study = self._studies[name]  # created or loaded once by run()
            trials = study.get_trials(deepcopy=False)
            if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                # only a dead worker leaves a running trial behind: fail it once its heartbeat
                # is stale (Optuna's retry callback enqueues it again), else come back later
                optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                    return None
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            counted = [t for t in trials if not (t.state == optuna.trial.TrialState.FAIL and t.number in retried)]
            finished = sum(t.state.is_finished() for t in counted)
            # the waiting trials are retries: each runs with the seed of the trial it replaces
            origins = {t.number: retried_number(t) for t in counted if t.state == optuna.trial.TrialState.WAITING}
            remaining = max(tune.trials - finished, len(origins))
            if remaining:
                self._optimize(name, spec, study, origins, first=finished, n_trials=remaining)
                report.trials += remaining
            self._select(suite, name, spec, study)
            self._finished_studies.add(name)
            return True

    def _optimize(self, name: str, spec: RunSpec, study: optuna.Study, origins: dict[int, int], first: int,
                  n_trials: int) -> None:
        """``n_trials`` trials in one ``study.optimize`` call (waiting retries are popped first).

        Each trial gets a fresh sampler seeded from its position in the study (``first`` trials
        are finished before this call), so a study gives the same trials whether it runs in one
        sitting or resumes after a crash."""
        sampler = spec.method.tune.sampler
        position = iter(range(first + 1, first + n_trials + 1))

        def reseed(study: optuna.Study, _trial) -> None:
            study.sampler = sampler.build(seed=derived_seed(sampler.seed, name, next(position)))

        reference = self._reference(spec)  # outside the sealed trial: it predicts on test too
        study.sampler = sampler.build(seed=derived_seed(sampler.seed, name, first))
        def objective(trial: optuna.trial.Trial) -> list[float]:
            try:
                return self._trial(name, spec, reference, trial, origins.get(trial.number, trial.number))
            except Exception as exc:  # Optuna marks the trial failed; one line here, the traceback on the trial
                trial.set_user_attr("error", traceback.format_exc())
                log.warning("%s: trial %d failed: %s: %s", name, trial.number, type(exc).__name__, exc)
                raise

        study.optimize(objective, n_trials=n_trials, catch=(Exception,), callbacks=[reseed, lambda *_: self._bar.update(1)])

    def _trial(self, name: str, spec: RunSpec, reference, trial: optuna.trial.Trial, origin: int) -> list[float]:
        """Apply the method with the trial's params to the dense reference and score it on
        validation, with the test split sealed."""
        from fairsqueeze.methods import METHODS, MethodContext

        started = time.perf_counter()
        violations = test_split_violations()
        with sealed_test_split():
            cls = METHODS.get(spec.method.name)
            params = cls.from_config(spec.method.params).space(trial)
            method = cls.from_config(dataclasses.asdict(params))  # validated like suite params
            seed = trial_seed(name, origin)
            torch.manual_seed(seed)
            view = self.plan.tasks[spec.task.key].view()
            dense_val = reference.val_predictions()
            ctx = MethodContext(model=copy.deepcopy(reference.model), task=view, device=self.runner.device, seed=seed,
                                dense_val=dense_val, generator=torch.Generator().manual_seed(seed))
            applied = time.perf_counter()
            outcome = method.apply(ctx)
            evaluated = time.perf_counter()
            model = outcome.model.to(self.runner.device).eval()
            result = score_on_validation(model, outcome.sparse_storage, view, reference.footprint, self.runner.device,
                                         spec.method.tune, dense_val)
        if test_split_violations() != violations:
            raise FairsqueezeError(f"method {spec.method.name!r} tried to read the test split during tuning")
        end = time.perf_counter()
        result.seconds = {"apply": evaluated - applied, "evaluate": end - evaluated, "setup": applied - started}
        record(trial, result, method.param_dict(), seed)
        return result.values

    def _select(self, suite: Suite, name: str, spec: RunSpec, study: optuna.Study) -> None:
        """Apply every policy of the entry to the finished trials and store the choices."""
        frame = trials_frame(study)
        with self.store.engine.connect() as conn:
            have = {r[0] for r in conn.execute(select(selections.c.policy).where(selections.c.study == name))}
        rows = []
        for policy in spec.method.tune.policies:
            if policy.label in have:
                continue
            number = policy.select(frame) if not frame.empty else None
            params = frame.set_index("number").loc[number, "params"] if number is not None else None
            label = f"{spec.method.label}[{policy.label}]"
            run_key = None
            if params is not None:
                run_key = RunSpec(spec.task, spec.model, MethodEntry(spec.method.name, params, label), spec.seed,
                                  spec.data).key
            else:
                log.warning("study %s: no trial qualifies for policy %s", name, policy.label)
            rows.append({"study": name, "policy": policy.label, "suite": suite.name, "label": label, "trial": number,
                         "params": json.dumps(params) if params is not None else None, "run_key": run_key,
                         "trials": spec.method.tune.trials})
        if rows:
            with contextlib.suppress(IntegrityError), self.store.engine.begin() as conn:
                conn.execute(insert(selections), rows)

    # -- dense references ----------------------------------------------------------------------
    def _reference(self, spec: RunSpec):
        from .reference import checkpoint_path

        if spec.dense_key not in self._references:
            task = self.plan.tasks[spec.task.key]
            with file_lock(checkpoint_path(spec.dense_key).with_suffix(".lock")):  # one trainer per machine
                self._references[spec.dense_key] = self.runner.prepare_reference(spec, task)
        return self._references[spec.dense_key]
