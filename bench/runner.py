"""Executes a suite: plan (load and check everything), then dense references, methods,
evaluation and storage.

Planning loads every task the suite needs, refuses tasks that cannot give meaningful
results, binds each run to the data its task loaded (so keys change when files change),
and checks every method against an untrained model, all before the store is written.
Execution then copies the cached dense model for every pending run, lets the method
transform it (seeing train and val only, with the test split sealed), predicts on val and
test, computes every metric from those predictions, and flags degenerate and no-effect
outcomes. Finished runs are skipped; failed or interrupted ones are retried.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError

from .biascard import bias_card
from .errors import ConfigError, DatasetMissing, FairsqueezeError
from .evaluate import predict
from .footprint import compression_ratio, footprint, measure_latency, serialized_size
from .metrics import compute_metrics
from .progress import progress_bar
from .reference import build_untrained, dense_reference
from .store import RunResult, Store
from .suite import RunSpec, Suite
from .tasks import TaskData, build_task, check_task, sealed_test_split, test_split_violations

log = logging.getLogger("fairsqueeze")

EVAL_SPLITS = ("val", "test")
# Latency protocol: median of LATENCY_REPEATS forwards of one validation batch of
# LATENCY_BATCH rows, after one warm-up, in eval mode on the run's device.
LATENCY_BATCH = 32
LATENCY_REPEATS = 5


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FairsqueezeError(f"--device {name}: CUDA is not available on this machine")
    if not (name == "cpu" or name.startswith("cuda")):
        raise FairsqueezeError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


def task_label(entry_name: str, options: dict, task: TaskData) -> str:
    """A table title naming the task's identity: dataset, target / sensitive, other options."""
    rest = {k: v for k, v in sorted(options.items()) if k not in ("target", "sensitive")}
    extra = f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else ""
    return f"{entry_name}: {task.target} / {task.sensitive}{extra}"


@dataclass
class Plan:
    """A suite bound to its data: the runs with their keys and the tasks they need."""

    suite: Suite
    runs: list[RunSpec]
    tasks: dict[str, TaskData]  # task entry key -> loaded task
    labels: dict[str, str]  # task entry key -> table title
    missing_tasks: list[str] = field(default_factory=list)
    studies: list[RunSpec] = field(default_factory=list)  # tuned entries: one study each (see worker.py)


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)
    flagged: dict[str, list[str]] = field(default_factory=dict)  # run key -> flags
    # wall seconds by phase: dense (train or load + its predictions), method (apply),
    # evaluation (predictions, metrics, footprint, latency), total (the whole execution)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("dense", "method", "evaluation", "total"), 0.0))

    @property
    def overhead(self) -> float:
        """Wall time outside dense training, method work and evaluation (store, bookkeeping)."""
        s = self.seconds
        return s["total"] - s["dense"] - s["method"] - s["evaluation"]


def plan_suite(suite: Suite, data_root: Path, skip_missing_data: bool = False) -> Plan:
    """Load and check everything the suite needs; raises FairsqueezeError before any write."""
    from fairsqueeze.methods import METHODS

    tasks, labels, missing = {}, {}, []
    for entry in {t.key: t for t in suite.tasks}.values():
        label = entry.label
        try:
            task = build_task(entry.name, data_root, **entry.options)
        except DatasetMissing as exc:
            if not skip_missing_data:
                raise
            log.warning("skipping %s", exc)
            missing.append(entry.name)
            continue
        check_task(task, label)
        tasks[entry.key] = task
        labels[entry.key] = task_label(entry.name, entry.options, task)
    runs = [spec.bind(tasks[spec.task.key].fingerprint) for spec in suite.runs() if spec.task.key in tasks]
    studies = [spec.bind(tasks[spec.task.key].fingerprint) for spec in suite.studies() if spec.task.key in tasks]
    by_model: dict[tuple[str, str], list[RunSpec]] = defaultdict(list)
    for spec in runs + studies:
        by_model[(spec.task.key, spec.model.label)].append(spec)
    for specs in by_model.values():  # parameters that do not fit the model (e.g. k above a layer's rank)
        model = build_untrained(specs[0], tasks[specs[0].task.key])
        for method in {s.method.label: s.method for s in specs}.values():
            try:
                METHODS.get(method.name).from_config(method.params).check_model(model)
            except ConfigError as exc:
                raise ConfigError(f"{suite.source}: method {method.label!r} on {specs[0].model.label}: {exc}") from None
    return Plan(suite, runs, tasks, labels, missing, studies)


class Runner:
    def __init__(self, store: Store, data_root: Path, device: torch.device, skip_missing_data: bool = False):
        self.store = store
        self.data_root = Path(data_root)
        self.device = device
        self.skip_missing_data = skip_missing_data

    def plan(self, suite: Suite) -> Plan:
        return plan_suite(suite, self.data_root, self.skip_missing_data)

    # -- execution ----------------------------------------------------------------------
    def run(self, suite_or_plan: Suite | Plan) -> RunReport:
        plan = suite_or_plan if isinstance(suite_or_plan, Plan) else self.plan(suite_or_plan)
        report = RunReport(missing_tasks=list(plan.missing_tasks))
        started = time.perf_counter()
        try:
            return self._execute(plan, report)
        finally:
            report.seconds["total"] = time.perf_counter() - started

    def _execute(self, plan: Plan, report: RunReport) -> RunReport:
        self._record_membership(plan)
        done = self.store.keys_with_status([r.key for r in plan.runs], "done")
        pending = list({r.key: r for r in plan.runs if r.key not in done}.values())  # a computation runs once
        report.skipped = len(plan.runs) - len(pending)
        if not pending:
            return report
        groups: dict[str, list[RunSpec]] = defaultdict(list)
        for spec in pending:
            groups[spec.dense_key].append(spec)

        bar = progress_bar(total=len(pending), desc=f"suite {plan.suite.name}", unit="run")
        for specs in groups.values():
            task = plan.tasks[specs[0].task.key]
            label = plan.labels[specs[0].task.key]
            self.store.put_task(specs[0].task.key, task.name, {**task.summary(), "label": label})
            dense_started = time.perf_counter()
            try:
                reference = self.prepare_reference(specs[0], task)
            except Exception as exc:  # every run of this reference fails with it; the suite goes on
                log.error("dense reference %s on %s failed: %s", specs[0].model.label, label, exc)
                for spec in specs:
                    self.store.start_run(spec.key, self._run_row(spec, task, label))
                    self.store.fail_run(spec.key, f"dense reference failed: {type(exc).__name__}: {exc}")
                    report.failed.append(spec.key)
                bar.update(len(specs))
                continue
            finally:
                report.seconds["dense"] += time.perf_counter() - dense_started
            for spec in specs:
                bar.set_postfix_str(f"{spec.task.name}/{spec.model.name}/{spec.method.label}/s{spec.seed}")
                result = self.run_one(spec, task, label, reference, report.seconds)
                if result is None:
                    report.failed.append(spec.key)
                else:
                    report.done += 1
                    if result.flags:
                        report.flagged[spec.key] = result.flags
                bar.update(1)
        bar.close()
        return report

    def prepare_reference(self, spec: RunSpec, task: TaskData) -> "DenseReference":
        """The dense reference of ``spec`` (loaded from the cache or trained), with its
        predictions and footprint; records its training history and bias card in the store."""
        dense, dense_info = dense_reference(spec, task, self.device)
        reference = DenseReference(dense, dense_info, task, self.device)
        row = {
            "task_key": spec.task.key,
            "task": spec.task.name,
            "model": spec.model.label,
            "seed": spec.seed,
            "history": dense_info["history"],
            "bias_card": bias_card(task, reference.predictions["val"], dense_info.get("underfit"),
                                   reference.predictions["test"]),
        }
        with contextlib.suppress(IntegrityError):  # another worker wrote the same row first
            self.store.put_dense(spec.dense_key, row)
        return reference

    def _record_membership(self, plan: Plan) -> None:
        suite = plan.suite
        self.store.put_suite(suite.name, suite.description, suite.source, suite_definition(suite))
        rows = [
            {
                "task_key": r.task.key,
                "model": r.model.label,
                "label": r.method.label,
                "seed": r.seed,
                "run_key": r.key,
                "entry": r.method.entry,
                "entry_label": r.method.entry_label,
                "sweep": r.method.sweep,
            }
            for r in plan.runs
        ]
        skipped = {t.key for t in suite.tasks if t.key not in plan.tasks}
        self.store.set_members(suite.name, rows, keep_tasks=skipped)

    def _run_row(self, spec: RunSpec, task: TaskData, label: str) -> dict:
        return {
            "task": spec.task.name,
            "task_key": spec.task.key,
            "task_label": label,
            "model": spec.model.label,
            "method": spec.method.name,
            "params": spec.method.params,
            "seed": spec.seed,
            "config": {
                "task": {"name": spec.task.name, "options": spec.task.options},
                "model": {"name": spec.model.name, "options": spec.model.options},
                "train": spec.model.train,
                "device": str(self.device),
            },
            "split_hash": task.split_hash,
            "data_hash": spec.data,
            "dense_hash": spec.dense_key,
        }

    def run_one(self, spec: RunSpec, task: TaskData, label: str, reference: "DenseReference",
                seconds: dict[str, float] | None = None, info: dict | None = None) -> RunResult | None:
        """Apply, evaluate and store one run; None when it failed (its error is stored).
        ``seconds`` accumulates the wall time of the method and of the evaluation; ``info`` is
        stored with the result (e.g. the tuning policy that selected it)."""
        seconds = seconds if seconds is not None else defaultdict(float)
        from fairsqueeze.methods import METHODS, MethodContext

        self.store.start_run(spec.key, self._run_row(spec, task, label))
        try:
            method = METHODS.get(spec.method.name).from_config(spec.method.params)
            torch.manual_seed(spec.seed)
            ctx = MethodContext(
                model=copy.deepcopy(reference.model),
                task=task.view(),
                device=self.device,
                seed=spec.seed,
                dense_val=reference.val_predictions(),
                generator=torch.Generator().manual_seed(spec.seed),
            )
            violations = test_split_violations()
            started = time.perf_counter()
            with sealed_test_split():
                outcome = method.apply(ctx)
            apply_seconds = time.perf_counter() - started
            seconds["method"] += apply_seconds
            if test_split_violations() != violations:
                raise FairsqueezeError(f"method {spec.method.name!r} tried to read the test split")
            model = outcome.model.to(self.device).eval()

            started = time.perf_counter()
            preds, metrics, fp_row = evaluate_outcome(model, outcome.sparse_storage, task, reference.footprint, self.device)
            flags, details = outcome_flags(preds, reference.predictions, is_reference=spec.method.name == "dense")
            seconds["evaluation"] += time.perf_counter() - started
            info = {"passes": outcome.passes, **outcome.info, "dense_train_loss": reference.info["history"][-1:] or None,
                    **(info or {})}
            if details:
                info["flag_details"] = details
            result = RunResult(
                metrics=metrics,
                footprint=fp_row,
                predictions=preds,
                timings={"apply_s": apply_seconds, "dense_cached": float(reference.info["cached"])},
                info=info,
                flags=flags,
            )
            self.store.finish_run(spec.key, result)
            for flag in flags:
                log.warning("run %s (%s, %s, seed %d) is flagged %s: %s", spec.method.label, label,
                            spec.model.label, spec.seed, flag, details.get(flag, ""))
            return result
        except KeyboardInterrupt:
            self.store.fail_run(spec.key, "interrupted")
            raise
        except Exception as exc:  # a failing method must not stop the suite
            log.error("run %s (%s/%s/%s) failed: %s", spec.key, spec.task.name, spec.model.name, spec.method.label, exc)
            self.store.fail_run(spec.key, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return None


class DenseReference:
    """The dense model of a group of runs, with its predictions and footprint (computed once)."""

    def __init__(self, model, info: dict, task: TaskData, device: torch.device):
        self.model = model
        self.info = info
        self.predictions = {name: predict(model, getattr(task, name), task.prepare, device) for name in EVAL_SPLITS}
        self.footprint = footprint(model)
        self._val = (task.val.y, task.val.s)

    def val_predictions(self):
        from fairsqueeze.methods import Predictions

        y, s = self._val
        return Predictions(y=y, y_pred=self.predictions["val"], s=s)


def outcome_flags(preds: dict, dense_preds: dict[str, np.ndarray], is_reference: bool) -> tuple[list[str], dict]:
    """``degenerate``: predictions constant on a split or on one group of a split (its gaps
    measure nothing); ``no_effect``: predictions equal the dense model's on every val and
    test row (not checked for the dense reference itself)."""
    details: dict[str, str] = {}
    constant = []
    for split, p in preds.items():
        if len(np.unique(p["y_pred"])) <= 1:
            constant.append(f"{split} (always {int(p['y_pred'][0]) if len(p['y_pred']) else '-'})")
            continue
        for g in np.unique(p["s"][p["s"] >= 0]):
            values = np.unique(p["y_pred"][p["s"] == g])
            if len(values) == 1 and (p["s"] == g).sum() > 1:
                constant.append(f"{split} group {int(g)} (always {int(values[0])})")
    if constant:
        details["degenerate"] = "constant predictions on " + ", ".join(constant)
    if not is_reference:
        changed = {split: int((p["y_pred"] != dense_preds[split]).sum()) for split, p in preds.items()}
        if not any(changed.values()):
            total = sum(len(p["y_pred"]) for p in preds.values())
            details["no_effect"] = f"0 of {total} val and test predictions differ from the dense model's"
    return sorted(details), details


def evaluate_outcome(model, sparse_storage, task: TaskData, dense_fp: dict, device):
    """Predictions on val and test, the metrics computed from them, and the footprint."""
    preds = {}
    for name in EVAL_SPLITS:
        split = getattr(task, name)
        preds[name] = {"index": split.index, "y": split.y, "y_pred": predict(model, split, task.prepare, device), "s": split.s}
    metrics = {
        split: compute_metrics(p["y"], p["y_pred"], p["s"], num_classes=task.num_classes) for split, p in preds.items()
    }
    fp = footprint(model, sparse_storage)
    fp_row = {k: v for k, v in fp.items() if not isinstance(v, dict)}
    fp_row.update({f"bytes[{k}]": v for k, v in fp.get("bytes_by_dtype", {}).items()})
    fp_row["compression_ratio"] = compression_ratio(dense_fp, fp)
    fp_row["serialized_bytes"] = serialized_size(model)
    example = task.prepare(task.val.x[:LATENCY_BATCH], False).to(device)
    fp_row["latency_s"] = measure_latency(model, example, repeats=LATENCY_REPEATS, warmup=1)
    return preds, metrics, fp_row


def suite_definition(suite: Suite) -> dict:
    """What the suite asked for, as stored beside its results."""
    return {
        "seeds": list(suite.seeds),
        "tasks": [{"name": t.name, "options": t.options} for t in suite.tasks],
        "models": [{"name": m.name, "options": m.options, "train": asdict(m.train), "tasks": m.tasks}
                   for m in suite.models],
        "methods": [{"name": m.name, "label": m.label, "params": m.params, "entry": m.entry,
                     "entry_label": m.entry_label, "sweep": m.sweep, "tune": m.tune and asdict(m.tune)}
                    for m in suite.methods],
    }
