"""Predictions of a model on a split: the only way any metric in the suite is produced."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .tasks import Split


@torch.inference_mode()
def predict(model: nn.Module, split: Split, prepare, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Argmax predictions of ``model`` on every row of ``split``, in order."""
    model.to(device).eval()
    out = []
    for start in range(0, len(split), batch_size):
        x = prepare(split.x[start : start + batch_size], False).to(device)
        out.append(model(x).argmax(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)
