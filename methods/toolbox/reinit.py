"""Fresh initial weights for a copy of a model."""
from __future__ import annotations

import torch
from torch import nn


def reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh weights for every layer that can reset itself, drawn with ``seed`` (PyTorch's
    default layer initialisation, not a model builder's own)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
