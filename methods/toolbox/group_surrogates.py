"""Smooth stand-ins for per-group rates, the pieces of fair-training losses.

A fairness constraint compares a rate (error, miss, false alarm, accuracy) between groups.
The indicator of a wrong prediction has no gradient, so training replaces it per example
by a smooth surrogate, and the rate of a cell (class k, group g) becomes the mean of the
surrogate over the cell's rows in the batch. A batch may hold no row of a cell:
:func:`cell_means` then marks the cell absent instead of dividing by zero, and the caller
decides what an absent cell means (the methods here leave that constraint out of the batch).

Surrogates of "class k is *not* predicted" (``miss``) and "class k *is* predicted"
(``false_alarm``), one column per class:

- ``"ce"``: the cross-entropy, −log p_k for a miss and −log(1 − p_k) for a false alarm;
- ``"sigmoid_margin"``: σ(−m_k) for a miss and σ(m_k) for a false alarm, where
  m_k = z_k − max_{j≠k} z_j is the margin of class k (for two classes, ±(z_1 − z_0)).
"""
from __future__ import annotations

import torch

SURROGATES = ("ce", "sigmoid_margin")


def class_margins(logits: torch.Tensor) -> torch.Tensor:
    """m_k = z_k − max_{j≠k} z_j for every row and class, shape (N, C)."""
    top = logits.topk(2, dim=1).values
    best, second = top[:, :1], top[:, 1:2]
    # the largest other logit is the runner-up for the top class and the top one otherwise
    return logits - torch.where(logits >= best, second, best)


def miss(logits: torch.Tensor, surrogate: str) -> torch.Tensor:
    """Smooth indicator that class k is not predicted, shape (N, C)."""
    if surrogate == "ce":
        return -torch.log_softmax(logits, dim=1)
    if surrogate == "sigmoid_margin":
        return torch.sigmoid(-class_margins(logits))
    raise ValueError(f"unknown surrogate {surrogate!r} (known: {', '.join(SURROGATES)})")


def false_alarm(logits: torch.Tensor, surrogate: str) -> torch.Tensor:
    """Smooth indicator that class k is predicted, shape (N, C)."""
    if surrogate == "ce":
        # −log(1 − p_k) = logsumexp(z) − logsumexp(z without k), stable for p_k near 1
        total = torch.logsumexp(logits, dim=1, keepdim=True)
        eye = torch.eye(logits.shape[1], dtype=torch.bool, device=logits.device)
        others = logits.unsqueeze(1).masked_fill(eye, float("-inf"))  # (N, k, j): z_j for j != k
        return total - torch.logsumexp(others, dim=2)
    if surrogate == "sigmoid_margin":
        return torch.sigmoid(class_margins(logits))
    raise ValueError(f"unknown surrogate {surrogate!r} (known: {', '.join(SURROGATES)})")


def cell_means(values: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` over the rows where ``member`` holds, per column; and which are non-empty.

    ``values`` and ``member`` are (N, K); an empty column gets mean 0 (not NaN) and
    ``present`` False, so a caller can drop it without the NaN reaching any gradient.
    """
    weights = member.to(values.dtype)
    count = weights.sum(0)
    means = (values * weights).sum(0) / count.clamp(min=1)
    return means, count > 0


def soft_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true class per row: σ(margin of y) for two classes."""
    return torch.softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
