"""One unit of work, executed the same way wherever it runs.

A fixed run, a tuning trial and a selected configuration's run are all: seal the test split,
seed, build the method's context on a copy of the dense reference, apply the method, check
that it never read the test split, then predict (``fairsqueeze.measure.evaluate.predict``, the only
prediction loop), compute metrics from the predictions and flag the outcome. A trial stops at
validation; a run also predicts on test, outside the seal, and measures the footprint. The
functions here return what the store records and write nothing: the runner, the worker and
the ``--jobs`` processes decide where it goes.
"""
from __future__ import annotations

import copy
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairsqueeze.measure.biascard import bias_card
from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.measure.evaluate import predict, predict_scores
from fairsqueeze.measure.thresholds import GroupThresholds, fit_group_thresholds
from fairsqueeze.measure.groups import DEFAULT_RULE, worse_group
from fairsqueeze.measure.footprint import compression_ratio, footprint, measure_latency, serialized_size
from fairsqueeze.measure.metrics import compute_metrics
from fairsqueeze.core.registry import create_method, method_identity
from fairsqueeze.engine.reference import dense_reference
from fairsqueeze.store.database import RunResult
from fairsqueeze.spec.entries import POST_STEPS, RunSpec
from fairsqueeze.datasets.base import TaskData, build_task, sealed_test_split, test_split_violations
from fairsqueeze.spec.tuning import TuneSpec

log = logging.getLogger("fairsqueeze")

EVAL_SPLITS = ("val", "test")
# Latency protocol: median of LATENCY_REPEATS forwards of one validation batch of
# LATENCY_BATCH rows, after one warm-up, in eval mode on the run's device.
LATENCY_BATCH = 32
LATENCY_REPEATS = 5


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


def prepare_reference(spec: RunSpec, task: TaskData, device: torch.device) -> tuple[DenseReference, dict]:
    """The dense reference of ``spec`` (loaded from the cache or trained) and the row the store
    keeps for it (training history, bias card)."""
    model, info = dense_reference(spec, task, device)
    reference = DenseReference(model, info, task, device)
    row = {"task_key": spec.task.key, "task": spec.task.name, "model": spec.model.label, "seed": spec.seed,
           "history": info["history"],
           "bias_card": bias_card(task, reference.predictions["val"], info.get("underfit"), reference.predictions["test"])}
    return reference, row


def run_row(spec: RunSpec, task: TaskData, label: str, device: torch.device) -> dict:
    """What the store records when a run starts: its configuration, hashes and the method's
    family and registry position (so pages never import a plugin)."""
    return {
        "task": spec.task.name,
        "task_key": spec.task.key,
        "task_label": label,
        "model": spec.model.label,
        # a post-processed run is another procedure: "dense+equal_tpr_thresholds" is neither the
        # dense reference nor a twin run, and a claim names it to compare against it
        "method": spec.method.name + (f"+{spec.method.post}" if spec.method.post else ""),
        **method_identity(spec.method.name),
        "params": spec.method.params,
        "seed": spec.seed,
        "config": {
            "task": {"name": spec.task.name, "options": spec.task.options},
            "model": {"name": spec.model.name, "options": spec.model.options},
            "train": spec.model.train,
            "device": str(device),
            **({"method_seed": spec.method.seed} if spec.method.seed is not None else {}),
        },
        "split_hash": task.split_hash,
        "data_hash": spec.data,
        "dense_hash": spec.dense_key,
    }


def apply_sealed(method, task, reference: DenseReference, device: torch.device, seed: int,
                 protect: str | None = None):
    """Apply ``method`` to a copy of the dense reference with the test split sealed, seeded by
    ``seed``; ``protect`` names the rule of its protected group. Returns (outcome, seconds in apply)."""
    from fairsqueeze.methods import MethodContext

    torch.manual_seed(seed)
    ctx = MethodContext(model=copy.deepcopy(reference.model), task=task.view(), device=device, seed=seed,
                        dense_val=reference.val_predictions(), generator=torch.Generator().manual_seed(seed),
                        protect=protect or DEFAULT_RULE)
    violations = test_split_violations()
    started = time.perf_counter()
    with sealed_test_split():
        outcome = method.apply(ctx)
    seconds = time.perf_counter() - started
    if test_split_violations() != violations:
        raise FairsqueezeError(f"method {type(method).__name__!r} tried to read the test split")
    outcome.model = outcome.model.to(device).eval()
    return outcome, seconds


def protected_group(reference: DenseReference, task: TaskData, protect: str | None) -> dict:
    """The group a method of this run protects (if it protects one) and the rule that named it,
    from the dense model's validation predictions: what the run's info records."""
    rule = protect or DEFAULT_RULE
    p = reference.val_predictions()
    group = worse_group(p.y, p.y_pred, p.s, rule, task.num_classes)
    return {"rule": rule, "group": group, "group_name": task.group_names.get(group, str(group))}


def split_predictions(model, task, splits, device: torch.device,
                      thresholds: GroupThresholds | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per-example predictions (row id, y, y_pred, s) of ``model`` on each named split; with
    ``thresholds``, its positive-class scores cut by each row's group threshold."""
    out = {}
    for name in splits:
        split = getattr(task, name)
        if thresholds is None:
            y_pred = predict(model, split, task.prepare, device)
        else:
            y_pred = thresholds.apply(predict_scores(model, split, task.prepare, device), split.s)
        out[name] = {"index": split.index, "y": split.y, "y_pred": y_pred, "s": split.s}
    return out


def post_thresholds(model, task: TaskData, post: str, device: torch.device) -> GroupThresholds:
    """The per-group thresholds of ``post`` (a POST_STEPS name), chosen on validation only."""
    if task.num_classes != 2:
        raise FairsqueezeError(f"post-processing {post!r} needs a binary task; {task.name} has {task.num_classes} classes")
    with sealed_test_split():
        scores = predict_scores(model, task.val, task.prepare, device)
    return fit_group_thresholds(scores, task.val.y, task.val.s, POST_STEPS[post])


def outcome_flags(preds: dict, dense_preds: dict[str, np.ndarray], is_reference: bool) -> tuple[list[str], dict]:
    """``degenerate``: predictions constant on a split or on one group of a split (its gaps
    measure nothing); ``no_effect``: predictions equal the dense model's on every row of the
    given splits (not checked for the dense reference itself)."""
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
            splits = " and ".join(preds)
            details["no_effect"] = f"0 of {total} {splits} predictions differ from the dense model's"
    return sorted(details), details


def footprint_row(model, sparse_storage, task: TaskData, dense_fp: dict, device: torch.device) -> dict:
    """Parameter counts, bytes, the papers' compression ratio, serialized size and latency."""
    fp = footprint(model, sparse_storage)
    row = {k: v for k, v in fp.items() if not isinstance(v, dict)}
    row.update({f"bytes[{k}]": v for k, v in fp.get("bytes_by_dtype", {}).items()})
    row["compression_ratio"] = compression_ratio(dense_fp, fp)
    row["serialized_bytes"] = serialized_size(model)
    example = task.prepare(task.val.x[:LATENCY_BATCH], False).to(device)
    row["latency_s"] = measure_latency(model, example, repeats=LATENCY_REPEATS, warmup=1)
    return row


def evaluate_outcome(model, sparse_storage, task: TaskData, dense_fp: dict, device,
                     thresholds: GroupThresholds | None = None):
    """Predictions on val and test, the metrics computed from them, and the footprint."""
    preds = split_predictions(model, task, EVAL_SPLITS, device, thresholds)
    metrics = {split: compute_metrics(p["y"], p["y_pred"], p["s"], num_classes=task.num_classes)
               for split, p in preds.items()}
    return preds, metrics, footprint_row(model, sparse_storage, task, dense_fp, device)


def execute_run(spec: RunSpec, task: TaskData, reference: DenseReference, device: torch.device,
                info: dict | None = None, dense_trained: bool = False) -> tuple[RunResult, dict]:
    """Apply and evaluate one run; raises what the method raised. Returns the result the store
    writes and the flags' explanations (for a log line)."""
    method = create_method(spec.method.name, spec.method.params)
    outcome, apply_seconds = apply_sealed(method, task, reference, device, spec.method_seed, spec.method.protect)
    started = time.perf_counter()
    thresholds = post_thresholds(outcome.model, task, spec.method.post, device) if spec.method.post else None
    preds, metrics, fp_row = evaluate_outcome(outcome.model, outcome.sparse_storage, task, reference.footprint, device,
                                              thresholds)
    reference_itself = spec.method.name == "dense" and not spec.method.post
    flags, details = outcome_flags(preds, reference.predictions, is_reference=reference_itself)
    evaluate_seconds = time.perf_counter() - started
    info = {"cost": outcome.cost.as_dict(), **outcome.info, "dense_train_loss": reference.info["history"][-1:] or None,
            "protect": protected_group(reference, task, spec.method.protect), **(info or {})}
    if thresholds is not None:
        info["post"] = {"step": spec.method.post, **thresholds.info()}
    if details:
        info["flag_details"] = details
    # dense_cached: the run did not wait for its dense model to train (a checkpoint or an earlier run's)
    timings = {"apply_s": apply_seconds, "evaluate_s": evaluate_seconds, "dense_cached": float(not dense_trained)}
    result = RunResult(metrics=metrics, footprint=fp_row, predictions=preds, timings=timings, info=info, flags=flags)
    return result, details


@dataclass
class TrialResult:
    values: list[float]
    metrics: dict[str, float]
    compression_ratio: float
    flags: list[str]  # the engine's outcome flags on validation: degenerate, no_effect
    accuracy_slack: float | None  # constraint value (<= 0 is feasible)
    seconds: dict[str, float]


def score_on_validation(model, sparse_storage, task_view, dense_fp, device, spec: TuneSpec, dense_val) -> TrialResult:
    """Objective values, metrics, footprint and flags of a compressed model on validation
    (``dense_val``: the dense model's validation predictions); never reads the test split.
    ``seconds`` is left for the caller to fill in."""
    preds = split_predictions(model, task_view, ("val",), device)
    val = preds["val"]
    metrics = compute_metrics(val["y"], val["y_pred"], val["s"], num_classes=task_view.num_classes)
    ratio = compression_ratio(dense_fp, footprint(model, sparse_storage))
    slack = None
    if spec.accuracy_within is not None:
        slack = (1 - spec.accuracy_within) * float(np.mean(dense_val.y == dense_val.y_pred)) - metrics["accuracy"]
    flags, _ = outcome_flags(preds, {"val": dense_val.y_pred}, is_reference=False)
    return TrialResult(spec.objectives.values(metrics, ratio), metrics, ratio, flags, slack, {})


def execute_trial(method_name: str, params: dict[str, Any], seed: int, task: TaskData, reference: DenseReference,
                  device: torch.device, tune: TuneSpec, protect: str | None = None) -> TrialResult:
    """Apply the method with a trial's params and seed and score it on validation, with the
    test split sealed for the whole trial (evaluation included)."""
    started = time.perf_counter()
    with sealed_test_split():
        method = create_method(method_name, params)
        outcome, apply_seconds = apply_sealed(method, task, reference, device, seed, protect)
        evaluated = time.perf_counter()
        result = score_on_validation(outcome.model, outcome.sparse_storage, task.view(), reference.footprint, device,
                                     tune, reference.val_predictions())
    end = time.perf_counter()
    result.seconds = {"apply": apply_seconds, "evaluate": end - evaluated,
                      "setup": evaluated - started - apply_seconds}
    return result



@dataclass
class Computed:
    """What computing one run gave: a result, or the error that stopped it; the dense
    reference's store row the first time this process prepared it."""

    key: str
    result: RunResult | None = None
    details: dict | None = None  # the flags' explanations
    error: str | None = None
    dense_row: dict | None = None
    dense_seconds: float = 0.0  # spent preparing the dense reference in this call
    started_at: float = field(default_factory=time.time)  # when the computation began (epoch seconds)


class Computer:
    """Computes runs in this process, keeping each task and dense reference it loaded: the
    runner's loop, each ``--jobs`` process and a worker each hold one. It writes nothing."""

    def __init__(self, device: torch.device, data_root: Path | None = None, tasks: dict[str, TaskData] | None = None):
        self.device = device
        self.data_root = data_root
        self.tasks: dict[str, TaskData] = dict(tasks or {})
        self.references: dict[str, DenseReference] = {}

    def task(self, spec: RunSpec) -> TaskData:
        """The spec's task, loaded once; refuses data other than what the spec was planned on."""
        if spec.task_instance not in self.tasks:
            task = build_task(spec.task.name, self.data_root, **spec.task_options)
            if task.fingerprint != spec.data:
                raise FairsqueezeError(f"task {spec.task.label}: its data changed since the suite was planned")
            self.tasks[spec.task_instance] = task
        return self.tasks[spec.task_instance]

    def reference(self, spec: RunSpec) -> tuple[DenseReference, dict | None]:
        """The dense reference of ``spec`` and, when this call prepared it, its store row."""
        if spec.dense_key in self.references:
            return self.references[spec.dense_key], None
        reference, row = prepare_reference(spec, self.task(spec), self.device)
        self.references[spec.dense_key] = reference
        return reference, row

    def run(self, spec: RunSpec, info: dict | None = None) -> Computed:
        """Compute one run; a failure (of the method or of its dense reference) is returned,
        never raised, so a suite goes on."""
        computed = Computed(spec.key)
        started = time.perf_counter()
        try:
            reference, computed.dense_row = self.reference(spec)
        except Exception as exc:
            computed.error = f"dense reference failed: {type(exc).__name__}: {exc}"
            return computed
        finally:
            computed.dense_seconds = time.perf_counter() - started
        try:
            trained = computed.dense_row is not None and not reference.info["cached"]
            computed.result, computed.details = execute_run(spec, self.task(spec), reference, self.device, info, trained)
        except Exception as exc:
            computed.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        return computed
