"""The dense reference: trained once per (task, model, training config, seed), cached by hash."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fairsqueeze.core.files import file_lock
from fairsqueeze.models.base import create_model
from fairsqueeze.spec.entries import RunSpec
from fairsqueeze.datasets.base import TaskData, cache_root
from fairsqueeze.measure.convergence import majority_rate, underfit_flag
from fairsqueeze.engine.training import train_reference

log = logging.getLogger("fairsqueeze")


def checkpoint_path(dense_key: str) -> Path:
    return cache_root() / "dense" / f"{dense_key}.pt"


def build_untrained(spec: RunSpec, task: TaskData) -> nn.Module:
    torch.manual_seed(spec.seed)  # the initial weights depend on the seed only
    return create_model(spec.model.name, task.input_shape, task.num_classes, **spec.model.options)


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_checkpoint(path: Path, model: nn.Module, task: TaskData) -> dict | None:
    """The saved training record if ``path`` holds a usable checkpoint of this model trained on
    exactly this task's split and data; None (with one log line saying why) otherwise."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        bound = (saved.get("split_hash"), saved.get("data_hash"))
        if bound != (task.split_hash, task.fingerprint):
            log.warning("dense checkpoint %s was trained on other data (split %s, data %s; now %s, %s); retraining",
                        path.name, *bound, task.split_hash, task.fingerprint)
            return None
        model.load_state_dict(saved["state_dict"])
    except Exception as exc:  # truncated, corrupted or of another shape: never trust it
        log.warning("dense checkpoint %s cannot be used (%s: %s); retraining", path.name, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None
    return saved


def dense_reference(spec: RunSpec, task: TaskData, device: torch.device) -> tuple[nn.Module, dict]:
    """Load the cached dense model for ``spec`` or train and cache it. Returns (model, info).

    The checkpoint records the split hash and data fingerprint it was trained on; a mismatch
    (or an unreadable file) retrains instead of loading. Processes of one machine that need
    the same reference wait for the one that trains it (a lock file in the cache).
    """
    path = checkpoint_path(spec.dense_key)
    with file_lock(path.with_suffix(".lock")):
        return _load_or_train(spec, task, device, path)


def _load_or_train(spec: RunSpec, task: TaskData, device: torch.device, path: Path) -> tuple[nn.Module, dict]:
    model = build_untrained(spec, task)
    if path.exists() and (saved := _load_checkpoint(path, model, task)) is not None:
        return model.to(device).eval(), _info(True, saved["history"], saved.get("training"), task)
    model = build_untrained(spec, task)  # a failed load may have filled part of the weights
    desc = f"dense {spec.model.name} on {spec.task.name} (seed {spec.seed})"
    training = train_reference(model, task, spec.model.train, device, spec.seed, desc=desc)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record = {"state_dict": state, "history": training["train_loss"], "training": training,
              "split_hash": task.split_hash, "data_hash": task.fingerprint}
    _save_atomic(record, path)
    return model.eval(), _info(False, training["train_loss"], training, task)


def _info(cached: bool, history: list[float], training: dict | None, task: TaskData) -> dict:
    """The reference's info: training losses, the training record and the underfit flag
    with its evidence (None for a checkpoint saved without a record)."""
    underfit = underfit_flag(training, majority_rate(task.train.y, task.val.y)) if training else None
    return {"cached": cached, "history": history, "training": training, "underfit": underfit}
