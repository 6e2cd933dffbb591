"""Real pruning masks and physical filter removal.

Unstructured masks use ``torch.nn.utils.prune``: a masked weight becomes ``weight_orig``
times a ``weight_mask`` buffer, recomputed before every forward pass, so training updates
``weight_orig`` but can never revive a pruned entry (its gradient is zero and the product
stays zero). Masks given twice for one weight combine (a weight once pruned stays pruned).
:func:`finalize_masks` bakes the masks into plain zero entries and removes the
reparametrization, so the model has ordinary parameters again (for storage and scoring).

Structured removal (:func:`remove_filters`) deletes conv output channels (or linear output
neurons) through
Torch-Pruning's dependency graph, which also shrinks everything that consumes them (batch
norm, the next conv's input channels, the first linear layer after a flatten).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn

__all__ = ["apply_masks", "current_masks", "finalize_masks", "remove_filters"]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Mask parameters of ``model`` in place; ``masks[name]`` is 1/True where a weight is kept.

    ``name`` is a parameter name (``"classifier.fc1.weight"``), and the mask has its shape.
    """
    for name, mask in masks.items():
        module, attr = _owner(model, name)
        current = getattr(module, attr)
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(current.shape)}")
        prune.custom_from_mask(module, attr, mask.to(device=current.device, dtype=current.dtype))
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The boolean masks now applied to ``model``, by parameter name (``"fc1.weight"``)."""
    found = {}
    for path, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                attr = hook._tensor_name
                found[f"{path}.{attr}" if path else attr] = getattr(module, f"{attr}_mask").bool()
    return found


def finalize_masks(model: nn.Module) -> nn.Module:
    """Turn every mask into plain zeros in the parameter and drop the reparametrization."""
    for name in current_masks(model):
        module, attr = _owner(model, name)
        prune.remove(module, attr)
    return model


def remove_filters(model: nn.Module, example_input: Tensor, keep: Mapping[str, Tensor]) -> nn.Module:
    """Physically delete the output channels of convs where ``keep[conv_path]`` is False.

    ``keep`` may also name ``nn.Linear`` layers: their output neurons are removed the same way.

    Works in place and returns ``model``. Channels coupled to other layers (batch norm, the
    next conv, a linear layer after flattening, residual sums) shrink with them. Two convs
    whose outputs are coupled (the two sides of a residual sum) must not both appear in
    ``keep``: give the removal for one of them. Every conv keeps at least one channel.
    """
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    convs = {}
    for path, flags in keep.items():
        conv = model.get_submodule(path)
        if not isinstance(conv, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"remove_filters: {path!r} is neither an nn.Conv2d nor an nn.Linear")
        flags = torch.as_tensor(flags, dtype=torch.bool).flatten()
        width = conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features
        if len(flags) != width:
            raise ValueError(f"remove_filters: {path!r} has {width} filters, got {len(flags)} flags")
        if not flags.any():
            raise ValueError(f"remove_filters: {path!r} would lose every filter")
        convs[path] = (conv, flags)
    by_module = {conv: path for path, (conv, _) in convs.items()}
    groups = []
    for path, (conv, flags) in convs.items():
        fn = tp.prune_conv_out_channels if isinstance(conv, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(conv, fn, idxs=torch.nonzero(~flags).flatten().tolist())
        coupled = [
            by_module[dep.target.module] for dep, _ in group
            if dep.target.module is not conv and dep.target.module in by_module
            and graph.is_out_channel_pruning_fn(dep.handler)
        ]
        if coupled:
            raise ValueError(f"remove_filters: the outputs of {path!r} and {coupled[0]!r} are coupled; give one of them")
        groups.append(group)
    # Each group only touches its conv's output channels and their consumers' input channels,
    # so removing one group leaves the indices of the others valid.
    for group in groups:
        if len(group[0][1]):
            group.prune()
    return model
