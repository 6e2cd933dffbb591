"""Import torchvision, also where its compiled extension cannot load.

The standard torchvision wheels on the package index are built against CUDA torch; next to
the CPU build of torch their C extension fails to load, and torchvision's import then stops
at an unguarded fake-kernel registration for the detection ops ``nms``/``qnms``
(pytorch/vision#9085). The models and transforms we use are pure Python, so declaring those
two op schemas is enough to import the rest. Detection ops stay unavailable.
"""
from __future__ import annotations

import sys

import torch

_fallback_lib = None


def _declare_missing_ops() -> None:
    global _fallback_lib
    if _fallback_lib is None:
        _fallback_lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _fallback_lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def load_torchvision():
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_missing_ops()
        import torchvision
    return torchvision


torchvision = load_torchvision()
