"""LoRA adapters through PEFT: attach, exchange as a serialisable message, merge, compare.

LoRA is not re-implemented here. PEFT injects the factors (W = W0 + (alpha/r) B A, with
A of shape r x d_in and B of shape d_out x r, B starting at zero) into the chosen modules
of any ``nn.Module``; this module chooses those modules per architecture and moves adapter
weights between models as :class:`AdapterMessage`, PEFT's own adapter state dict.

PEFT is imported on first use: it pulls in ``transformers``, which takes seconds to load.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.models.base import linear_layers


def _peft():
    from fairsqueeze.core import vision  # noqa: F401  (torchvision must import before transformers does)
    import peft

    return peft


# --------------------------------------------------------------------------- which modules


def head_path(model: nn.Module) -> str:
    """The classifier: the last linear layer of the model (``fcN``, ``fc``, ``heads.head``)."""
    layers = list(linear_layers(model))
    if not layers:
        raise ConfigError("LoRA needs a model whose classifier is a linear layer")
    return layers[-1]


def default_targets(model: nn.Module) -> list[str]:
    """The modules that get adapters when ``target_modules`` is ``auto``.

    ViT: every attention block (PEFT adapts the fused q/k/v input projection and the output
    projection of ``nn.MultiheadAttention``), as the LoRA papers do. ResNet: the 3x3
    convolutions of the last stage (``layer4``). Otherwise: every linear layer but the
    classifier (the MLP's hidden layers).
    """
    modules = dict(model.named_modules())
    attention = [p for p, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
    if attention:
        return attention
    last_stage = [p for p, m in modules.items() if isinstance(m, nn.Conv2d) and re.fullmatch(r"layer4\.\d+\.conv\d", p)]
    if last_stage:
        return last_stage
    head = head_path(model)
    return [p for p in linear_layers(model) if p != head]


def resolve_targets(model: nn.Module, target_modules: str) -> list[str]:
    """``auto`` or a comma-separated list of module paths (or unique last components)."""
    if target_modules == "auto":
        return default_targets(model)
    modules = dict(model.named_modules())
    paths = []
    for name in (n.strip() for n in target_modules.split(",") if n.strip()):
        matches = [p for p in modules if p == name or p.endswith("." + name)]
        if not matches:
            raise ConfigError(f"target_modules: no module {name!r} in the model")
        paths.extend(matches)
    return paths


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scale numerator (scale = alpha / rank), dropout and target modules of an adapter.

    Two models adapted with one spec must resolve ``target_modules`` to the same modules:
    give full paths (what :func:`resolve_targets` returns) when the models differ.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: str = "auto"

    def config(self, model: nn.Module):
        return _peft().LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=resolve_targets(model, self.target_modules),
        )


def attach(model: nn.Module, spec: LoraSpec, name: str) -> nn.Module:
    """Wrap ``model`` with one fresh adapter ``name``; every other parameter is frozen.

    Returns PEFT's wrapper; :func:`unwrap` gives the adapted module tree itself.
    """
    peft_model = _peft().get_peft_model(model, spec.config(model), adapter_name=name)
    _count_out_proj_delta_once(peft_model)
    return peft_model


def _skip(*_args, **_kwargs) -> None:
    return None


def _count_out_proj_delta_once(peft_model: nn.Module) -> None:
    """Work around a PEFT bug (0.21.2, the latest release): its ``nn.MultiheadAttention``
    adapter merges the output projection's delta (alpha/r)·B·A into the weight itself and then
    asks the inner LoRA linear to merge, which adds it again. Attention merges on every
    forward pass, so training, prediction and ``merge_and_unload`` all see twice the delta.
    The attention adapter's own addition is the one autograd follows, so the inner linear's
    merge and unmerge are switched off: each adds or removes the delta exactly once.
    """
    attention = _peft().tuners.lora.layer.MultiheadAttention
    for module in peft_model.modules():
        if isinstance(module, attention):
            inner = module.get_base_layer().out_proj
            inner.merge, inner.unmerge = _skip, _skip


def unwrap(peft_model: nn.Module) -> nn.Module:
    """The module tree with adapters in place (parameters = backbone + adapter factors)."""
    return peft_model.get_base_model()


def adapter_parameters(peft_model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Adapter ``name``'s factors, keyed as in its message (PEFT's state-dict keys)."""
    marker = f".{name}."
    return {
        key.replace(marker, "."): p
        for key, p in peft_model.named_parameters()
        if marker in key and (".lora_A." in key or ".lora_B." in key)
    }


# --------------------------------------------------------------------------- the message


FACTOR_KEY = re.compile(r".*\.lora_[AB]\.weight")
ROLES = ("task", "sensitive")  # what an adapter was trained for; the only roles a message may name


def adapter_layout(backbone: nn.Module, spec: LoraSpec) -> dict[str, tuple[int, ...]]:
    """The key and shape of every LoRA factor that ``spec`` puts on ``backbone``: what an
    adapter message for that shared backbone holds, and all it may hold.

    Linear: A is r x d_in, B d_out x r. Conv2d: A is r x c_in x kh x kw, B c_out x r x 1 x 1.
    MultiheadAttention (PEFT adapts both projections): the fused in-projection (A r x d,
    B 3d x r) under the block's own key and the out-projection (A r x d, B d x r).
    """
    r = spec.rank
    layout: dict[str, tuple[int, ...]] = {}

    def factors(path: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        layout[f"base_model.model.{path}.lora_A.weight"] = a
        layout[f"base_model.model.{path}.lora_B.weight"] = b

    for path in resolve_targets(backbone, spec.target_modules):
        module = backbone.get_submodule(path)
        if isinstance(module, nn.MultiheadAttention):
            d = module.embed_dim
            factors(path, (r, d), (3 * d, r))
            factors(f"{path}.base_layer.out_proj", (r, d), (module.out_proj.out_features, r))
        elif isinstance(module, nn.Conv2d):
            factors(path, (r, module.in_channels // module.groups, *module.kernel_size), (module.out_channels, r, 1, 1))
        elif isinstance(module, nn.Linear):
            factors(path, (r, module.in_features), (module.out_features, r))
        else:
            raise ConfigError(f"LoRA: no adapter layout for {type(module).__name__} at {path!r}")
    return layout


@dataclass(frozen=True)
class AdapterMessage:
    """Adapter weights, the only thing the two sides of a privacy split exchange.

    ``weights`` holds LoRA factors only (keys end in ``lora_A.weight``/``lora_B.weight``),
    ``role`` is one of :data:`ROLES` and ``spec`` a :class:`LoraSpec` of typed fields; the
    constructor refuses anything else. What a receiver accepts is narrower still: exactly
    the factors, with the shapes, that the agreed spec puts on the shared backbone
    (:class:`fairsqueeze.methods.lora_privacy.Channel` checks it). It serialises to
    safetensors bytes with the role and spec as its only metadata.
    """

    role: str
    spec: LoraSpec
    weights: Mapping[str, torch.Tensor] = field(repr=False)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"an adapter message's role is one of {', '.join(ROLES)}, not {self.role!r}")
        if not isinstance(self.spec, LoraSpec):
            raise ValueError(f"an adapter message's spec is a LoraSpec, not {type(self.spec).__name__}")
        stray = [k for k in self.weights if not FACTOR_KEY.fullmatch(k)]
        if stray:
            raise ValueError(f"an adapter message carries LoRA factors only, not {stray[0]!r}")

    def check_layout(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        """Raise ValueError unless the weights are exactly ``layout``'s factors, of its shapes,
        as floating-point tensors."""
        extra, missing = sorted(set(self.weights) - set(layout)), sorted(set(layout) - set(self.weights))
        if extra or missing:
            raise ValueError(f"the message's factors are not the agreed adapter's "
                             f"({'unexpected ' + extra[0] if extra else 'missing ' + missing[0]})")
        for key, tensor in self.weights.items():
            if tuple(tensor.shape) != tuple(layout[key]) or not tensor.is_floating_point():
                raise ValueError(f"the message's {key} is a {tensor.dtype} of shape {tuple(tensor.shape)}, "
                                 f"not a float factor of shape {tuple(layout[key])}")

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {"role": self.role, "spec": json.dumps(dataclasses.asdict(self.spec))}
        return save({k: v.detach().cpu().contiguous() for k, v in self.weights.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> "AdapterMessage":
        from safetensors.torch import load

        meta = _safetensors_metadata(data)
        if set(meta) != {"role", "spec"}:
            raise ValueError(f"an adapter message's metadata is its role and spec only, not {sorted(meta)}")
        return cls(meta["role"], spec_from_json(meta["spec"]), load(data))


def spec_from_json(text: str) -> LoraSpec:
    """A :class:`LoraSpec` from its JSON fields, each of its declared type (nothing else)."""
    fields = json.loads(text)
    types = {"rank": int, "alpha": (int, float), "dropout": (int, float), "target_modules": str}
    if not isinstance(fields, dict) or set(fields) != set(types) or any(
            isinstance(fields[k], bool) or not isinstance(fields[k], t) for k, t in types.items()):
        raise ValueError(f"an adapter spec has the fields {', '.join(types)} with their types, got {text!r}")
    return LoraSpec(int(fields["rank"]), float(fields["alpha"]), float(fields["dropout"]), fields["target_modules"])


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # the format starts with the header's length (8 bytes, little-endian), then the JSON header
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def export_adapter(peft_model: nn.Module, name: str, spec: LoraSpec, role: str) -> AdapterMessage:
    """Adapter ``name`` of ``peft_model`` as a message (PEFT's adapter state dict, copied)."""
    state = _peft().get_peft_model_state_dict(peft_model, adapter_name=name)
    return AdapterMessage(role, spec, {k: v.detach().clone() for k, v in state.items()})


@torch.no_grad()
def import_adapter(peft_model: nn.Module, name: str, message: AdapterMessage) -> None:
    """Overwrite adapter ``name``'s factors with the message's, in place (optimizer state stays)."""
    params = adapter_parameters(peft_model, name)
    if set(params) != set(message.weights) or any(p.shape != message.weights[k].shape for k, p in params.items()):
        raise ValueError("the message's adapter does not fit this model (different targets, rank or backbone)")
    for key, p in params.items():
        p.copy_(message.weights[key])


# --------------------------------------------------------------------------- arithmetic


def negate_into(model: nn.Module, message: AdapterMessage, strength: float) -> nn.Module:
    """``model`` with the message's update subtracted: W <- W0 - strength * (alpha/r) B A.

    Task-arithmetic negation: PEFT attaches the adapter at scale ``-strength`` and merges it
    into the base weights; the returned module has no adapter left.
    """
    peft_model = attach(model, message.spec, "negated")
    import_adapter(peft_model, "negated", message)
    for module in peft_model.modules():
        if isinstance(module, _peft().tuners.lora.LoraLayer):
            module.set_scale("negated", -strength)
    return peft_model.merge_and_unload()


def subspace_overlap(
    factors: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], normalized: bool = False
) -> torch.Tensor:
    """Sum over adapted layers of ||A_1 A_2^T||_F^2, the input-side factors' overlap.

    Zero iff every row of one adapter's A is orthogonal to every row of the other's (the
    O-LoRA orthogonality). ``normalized`` divides each layer's term by ||A_1||_F^2 ||A_2||_F^2
    (a squared cosine in [0, 1] that shrinking A cannot lower).
    """
    total = None
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        a1, a2 = a.flatten(1), other[key].to(a).flatten(1)
        term = (a1 @ a2.T).pow(2).sum()
        if normalized:
            term = term / (a1.pow(2).sum() * a2.pow(2).sum()).clamp_min(1e-30)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no LoRA A factors to compare")
    return total
