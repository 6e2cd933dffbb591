"""The model plugin contract: builders behind one factory, the helpers that find the linear
layers methods target, and the local cache of pretrained weights.

A builder is registered by name and called as ``builder(input_shape, num_classes, **options)``;
its keyword parameters (with their defaults) are the options a suite may set. Every model
names its linear layers, so a method can be pointed at e.g. ``"fc2"``.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.registry import MODELS

log = logging.getLogger(__name__)

Builder = Callable[..., nn.Module]


@dataclass
class ModelSpec:
    name: str
    builder: Builder
    description: str

    def option_defaults(self) -> dict[str, Any]:
        """The options this model accepts, with their default values."""
        return {p.name: p.default for p in _option_parameters(self.builder)}


def register_model(name: str, description: str):
    """Register ``builder(input_shape, num_classes, **options) -> nn.Module`` under ``name``."""

    def decorator(builder: Builder) -> Builder:
        MODELS.register(name)(ModelSpec(name, builder, description))
        return builder

    return decorator


def _option_parameters(builder: Builder) -> list[inspect.Parameter]:
    # the first two parameters are input_shape and num_classes; the rest are options
    return list(inspect.signature(builder).parameters.values())[2:]


def create_model(name: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (without batch) and ``num_classes`` outputs."""
    spec = MODELS.get(name)
    known = [p.name for p in _option_parameters(spec.builder)]
    for option in options:
        if option not in known:
            raise ConfigError(
                f"model {name!r}: unknown option {option!r} (known: {', '.join(known) or 'none'})"
            )
    return spec.builder(tuple(int(d) for d in input_shape), int(num_classes), **options)


# --------------------------------------------------------------------------- layer lookup


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Module path -> nn.Linear for every linear layer a method can replace.

    Projections owned by ``nn.MultiheadAttention`` are left out: attention reads their
    weight tensors directly instead of calling them, so swapping them would break it.
    """
    owned_by_attention = {
        id(child)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        for child in module.children()
    }
    return {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in owned_by_attention
    }


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """Find a submodule by full path (``classifier.fc2``) or by a unique last component (``fc2``)."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return name, modules[name]
    matches = [path for path in modules if path.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    available = ", ".join(linear_layers(model)) or "none"
    if matches:
        raise ConfigError(
            f"layer {name!r} is ambiguous: it matches {', '.join(matches)}; give the full path"
            f" (linear layers: {available})"
        )
    raise ConfigError(f"no layer {name!r} in the model (linear layers: {available})")


# --------------------------------------------------------------------------- pretrained weights


def cached_weights_path(weights: Any) -> str:
    """Where torch hub keeps the file of a torchvision weights entry once downloaded."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_cached_weights(model_name: str, weights: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of ``weights`` if it is already in the local cache; never downloads.

    Runs must not depend on network access, so a missing file means training from scratch.
    """
    path = cached_weights_path(weights)
    if not os.path.exists(path):
        log.warning(
            "model %r: pretrained weights not found at %s; the model trains from scratch", model_name, path
        )
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
