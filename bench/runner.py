"""Executes a suite's plan: dense references, methods, evaluation, storage.

For every pending run the engine copies the cached dense model, lets the method transform
it (seeing train and val only), predicts on val and test, and computes every metric from
those predictions. Finished runs are skipped; failed or interrupted ones are retried.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError

from .biascard import bias_card
from .errors import DatasetMissing, FairsqueezeError
from .evaluate import predict
from .footprint import compression_ratio, footprint, measure_latency, serialized_size
from .metrics import compute_metrics
from .progress import progress_bar
from .reference import dense_reference
from .store import RunResult, Store
from .suite import RunSpec, Suite
from .tasks import TaskData, build_task

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


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)


def _predictions(model, task: TaskData, device) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in EVAL_SPLITS:
        split = getattr(task, name)
        out[name] = {"index": split.index, "y": split.y, "y_pred": predict(model, split, task.prepare, device), "s": split.s}
    return out


class Runner:
    def __init__(self, store: Store, data_root: Path, device: torch.device, skip_missing_data: bool = False):
        self.store = store
        self.data_root = Path(data_root)
        self.device = device
        self.skip_missing_data = skip_missing_data

    # -- planning -----------------------------------------------------------------------
    def pending(self, suite: Suite) -> tuple[list[RunSpec], int]:
        plan = suite.runs()
        done = self.store.keys_with_status([r.key for r in plan], "done")
        return [r for r in plan if r.key not in done], len(done)

    def _load_tasks(self, runs: list[RunSpec], report: RunReport) -> dict[str, TaskData]:
        """Build every task the pending runs need before anything is written."""
        tasks: dict[str, TaskData] = {}
        for entry in {r.task.key: r.task for r in runs}.values():
            try:
                tasks[entry.key] = build_task(entry.name, self.data_root, **entry.options)
            except DatasetMissing as exc:
                if not self.skip_missing_data:
                    raise
                log.warning("skipping %s", exc)
                report.missing_tasks.append(entry.name)
        return tasks

    # -- execution ----------------------------------------------------------------------
    def run(self, suite: Suite) -> RunReport:
        report = RunReport()
        pending, report.skipped = self.pending(suite)
        if not pending:
            return report
        tasks = self._load_tasks(pending, report)
        pending = [r for r in pending if r.task.key in tasks]
        groups: dict[tuple, list[RunSpec]] = defaultdict(list)
        for spec in pending:
            groups[(spec.task.key, spec.dense_key)].append(spec)

        bar = progress_bar(total=len(pending), desc=f"suite {suite.name}", unit="run")
        for (task_key, _), specs in groups.items():
            task = tasks[task_key]
            self.store.put_task(task_key, task.name, task.summary())
            try:
                dense, dense_info, dense_val, dense_fp = self.prepare_reference(specs[0], task)
            except Exception as exc:  # every run of this reference fails with it; the suite goes on
                log.error("dense reference %s on %s failed: %s", specs[0].model.label, task.name, exc)
                for spec in specs:
                    self.store.start_run(spec.key, self._run_row(spec, suite, task))
                    self.store.fail_run(spec.key, f"dense reference failed: {type(exc).__name__}: {exc}")
                    report.failed.append(spec.key)
                bar.update(len(specs))
                continue
            for spec in specs:
                bar.set_postfix_str(f"{spec.task.name}/{spec.model.name}/{spec.method.label}/s{spec.seed}")
                ok = self.run_one(spec, suite, task, dense, dense_info, dense_val, dense_fp)
                report.done += ok
                if not ok:
                    report.failed.append(spec.key)
                bar.update(1)
        bar.close()
        return report

    def prepare_reference(self, spec: RunSpec, task: TaskData):
        """The dense reference of ``spec`` (trained or loaded), its validation predictions and
        footprint; records the reference's bias card in the store. Reads train and val only."""
        dense, dense_info = dense_reference(spec, task, self.device)
        dense_val = compute_dense_val(dense, task, self.device)
        dense_fp = footprint(dense)
        row = {
            "task_key": spec.task.key,
            "task": spec.task.name,
            "model": spec.model.label,
            "seed": spec.seed,
            "history": dense_info["history"],
            "bias_card": bias_card(task, dense_val.y_pred),
        }
        with contextlib.suppress(IntegrityError):  # another worker wrote the same row first
            self.store.put_dense(spec.dense_key, row)
        return dense, dense_info, dense_val, dense_fp

    def _run_row(self, spec: RunSpec, suite: Suite, task: TaskData) -> dict:
        return {
            "suite": suite.name,
            "task": spec.task.name,
            "task_key": spec.task.key,
            "model": spec.model.label,
            "method": spec.method.name,
            "label": spec.method.label,
            "params": spec.method.params,
            "seed": spec.seed,
            "config": {
                "task": {"name": spec.task.name, "options": spec.task.options},
                "model": {"name": spec.model.name, "options": spec.model.options},
                "train": spec.model.train,
                "device": str(self.device),
            },
            "split_hash": task.split_hash,
            "dense_hash": spec.dense_key,
        }

    def run_one(
        self, spec: RunSpec, suite: Suite, task: TaskData, dense, dense_info, dense_val, dense_fp, info: dict | None = None
    ) -> bool:
        """Execute one run; ``info`` is stored with its result (e.g. the policy that selected it)."""
        from fairsqueeze.methods import METHODS, MethodContext

        self.store.start_run(spec.key, self._run_row(spec, suite, task))
        try:
            method = METHODS.get(spec.method.name).from_config(spec.method.params)
            torch.manual_seed(spec.seed)
            generator = torch.Generator().manual_seed(spec.seed)
            ctx = MethodContext(
                model=copy.deepcopy(dense),
                task=task.view(),
                device=self.device,
                seed=spec.seed,
                dense_val=dense_val,
                generator=generator,
            )
            started = time.perf_counter()
            outcome = method.apply(ctx)
            apply_seconds = time.perf_counter() - started
            model = outcome.model.to(self.device).eval()

            preds, metrics, fp_row = evaluate_outcome(model, outcome.sparse_storage, task, dense_fp, self.device)
            result = RunResult(
                metrics=metrics,
                footprint=fp_row,
                predictions=preds,
                timings={"apply_s": apply_seconds, "dense_cached": float(dense_info["cached"])},
                info={
                    "passes": outcome.passes,
                    **outcome.info,
                    "dense_train_loss": dense_info["history"][-1:] or None,
                    **(info or {}),
                },
            )
            self.store.finish_run(spec.key, result)
            return True
        except KeyboardInterrupt:
            self.store.fail_run(spec.key, "interrupted")
            raise
        except Exception as exc:  # a failing method must not stop the suite
            log.error("run %s (%s/%s/%s) failed: %s", spec.key, spec.task.name, spec.model.name, spec.method.label, exc)
            self.store.fail_run(spec.key, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return False


def evaluate_outcome(model, sparse_storage, task: TaskData, dense_fp: dict, device):
    """Predictions on val and test, the metrics computed from them, and the footprint."""
    preds = _predictions(model, task, device)
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


def compute_dense_val(dense, task: TaskData, device):
    from fairsqueeze.methods import Predictions

    return Predictions(y=task.val.y, y_pred=predict(dense, task.val, task.prepare, device), s=task.val.s)
