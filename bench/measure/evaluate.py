"""Predictions of a model on a split: the only way any metric in the suite is produced."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.measure.metrics import compute_metrics

if TYPE_CHECKING:  # a hint only: measuring needs the split's arrays, not the task layer
    from fairsqueeze.datasets.base import Split


class NonFiniteOutput(FairsqueezeError):
    """The model produced NaN or infinite logits: its argmax would be an arbitrary class."""


def _logits(model: nn.Module, split: Split, prepare, device: torch.device, batch_size: int):
    """The model's logits on ``split``, batch by batch, in order; NaN or infinite ones raise."""
    model.to(device).eval()
    for start in range(0, len(split), batch_size):
        x = prepare(split.x[start : start + batch_size], False).to(device)
        logits = model(x)
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(dim=1).sum())
            raise NonFiniteOutput(f"the model produced NaN or infinite outputs on {bad} of {len(x)} rows"
                                  f" (rows {start}..{start + len(x) - 1} of the split)")
        yield logits


@torch.inference_mode()
def predict(model: nn.Module, split: Split, prepare, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Argmax predictions of ``model`` on every row of ``split``, in order.

    Raises :class:`NonFiniteOutput` when a logit is NaN or infinite, rather than returning
    the arbitrary class argmax would pick.
    """
    out = [logits.argmax(dim=1).cpu() for logits in _logits(model, split, prepare, device, batch_size)]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)


@torch.inference_mode()
def predict_scores(model: nn.Module, split: Split, prepare, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """The positive-class probability (softmax of class 1) of a binary ``model`` on every row
    of ``split``: what per-group thresholds cut (``fairsqueeze.measure.thresholds``)."""
    out = [torch.softmax(logits.float(), dim=1)[:, 1].cpu() for logits in _logits(model, split, prepare, device, batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def split_metrics(model: nn.Module, split: Split, prepare, device: torch.device, num_classes: int) -> dict[str, float]:
    """Every metric of ``model`` on ``split``, computed from its predictions: what a trial is
    scored on, and what a method that picks among its own checkpoints on validation must use."""
    return compute_metrics(split.y, predict(model, split, prepare, device), split.s, num_classes=num_classes)
