"""The dense reference: trained once per (task, model, training config, seed), cached by hash."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .models import create_model
from .suite import RunSpec
from .tasks import TaskData, cache_root
from .training import train_model


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


def dense_reference(spec: RunSpec, task: TaskData, device: torch.device) -> tuple[nn.Module, dict]:
    """Load the cached dense model for ``spec`` or train and cache it. Returns (model, info)."""
    path = checkpoint_path(spec.dense_key)
    model = build_untrained(spec, task)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.to(device).eval(), {"cached": True, "history": saved["history"]}
    desc = f"dense {spec.model.name} on {spec.task.name} (seed {spec.seed})"
    history = train_model(model, task, spec.model.train, device, spec.seed, desc=desc)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _save_atomic({"state_dict": state, "history": history}, path)
    return model.eval(), {"cached": False, "history": history}
