"""Weight quantizers and layers that store some of their weights as real int8 codes.

Two codecs turn float weights into one signed byte each and back:

``PowerOfTwo`` (FairQuantize's quantizer)
    q(w) = sign(w)·2^round(log2|w|). The reference code keeps the exponent unbounded, which
    has no bit width; here one byte holds the sign and an exponent index:
    ``code = sign(w)·(e − e_min + 1)`` with ``|code| <= 2^exponent_bits − 1`` and ``code = 0``
    for w = 0. The window ``[e_min, e_max]`` is anchored at the largest exponent of the tensor
    it is fitted to; exponents outside it are clipped to its ends, and :meth:`clipped` counts
    how many weights that moved.
``SymmetricInt8`` (a labelled, non-reference alternative)
    Per-tensor scale max|w|/127, ``code = clamp(round(w/scale), −127, 127)``.

A codec is fitted once per tensor (on the dense weights) and then kept fixed, so that codes
written early in a progressive schedule stay valid when the remaining weights move.

:class:`CodedLinear` and :class:`CodedConv2d` replace ``nn.Linear``/``nn.Conv2d`` with a weight
split in two: ``weight_values`` (float parameter, the unquantized entries in row-major order)
and ``weight_codes`` (int8 buffer, the quantized entries). Which entries are coded is a bit
mask packed eight positions to a byte (``weight_positions``). The footprint counts values and
codes (4 and 1 bytes per entry), not the mask nor the codec's few numbers: that is the
papers' convention (no index overhead); the serialized size includes both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairsqueeze.core.errors import ConfigError

SCHEMES = ("pow2", "int8_sym")


@dataclass(frozen=True)
class PowerOfTwo:
    """Sign and clipped exponent in one byte; see the module notes."""

    max_exponent: int
    exponent_bits: int = 7

    kind = "pow2"

    def __post_init__(self):
        if not 1 <= self.exponent_bits <= 7:
            raise ConfigError("exponent_bits must lie in 1..7 (sign + exponent in one int8)")

    @property
    def min_exponent(self) -> int:
        return self.max_exponent - (2**self.exponent_bits - 2)

    @classmethod
    def fit(cls, weight: Tensor, exponent_bits: int = 7) -> "PowerOfTwo":
        largest = weight.detach().abs().max()
        if not torch.isfinite(largest) or largest == 0:
            return cls(0, exponent_bits)
        return cls(int(torch.round(torch.log2(largest))), exponent_bits)

    def exponents(self, weight: Tensor) -> Tensor:
        """round(log2|w|) before clipping (−inf for zeros)."""
        return torch.round(torch.log2(weight.detach().abs().double()))

    def encode(self, weight: Tensor) -> Tensor:
        e = self.exponents(weight).clamp(self.min_exponent, self.max_exponent)
        magnitude = (e - self.min_exponent + 1).to(torch.int8)
        return torch.where(weight == 0, torch.zeros_like(magnitude), magnitude * torch.sign(weight).to(torch.int8))

    def decode(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        magnitude = codes.abs().to(torch.float64)
        values = torch.sign(codes).to(torch.float64) * torch.exp2(magnitude + (self.min_exponent - 1))
        return values.to(dtype)

    def clipped(self, weight: Tensor) -> int:
        e = self.exponents(weight)
        nonzero = weight != 0
        return int(((e < self.min_exponent) | (e > self.max_exponent))[nonzero].sum())


@dataclass(frozen=True)
class SymmetricInt8:
    """Per-tensor symmetric int8: w ≈ code·scale, scale = max|w|/127 of the fitted tensor."""

    scale: float

    kind = "int8_sym"

    @classmethod
    def fit(cls, weight: Tensor, exponent_bits: int = 7) -> "SymmetricInt8":
        largest = float(weight.detach().abs().max()) if weight.numel() else 0.0
        return cls(largest / 127 if largest > 0 else 1.0)

    def encode(self, weight: Tensor) -> Tensor:
        return torch.round(weight.detach().double() / self.scale).clamp(-127, 127).to(torch.int8)

    def decode(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return (codes.to(torch.float64) * self.scale).to(dtype)

    def clipped(self, weight: Tensor) -> int:
        return int((torch.round(weight.detach().abs().double() / self.scale) > 127).sum())


Codec = Union[PowerOfTwo, SymmetricInt8]


def fit_codec(scheme: str, weight: Tensor, exponent_bits: int = 7) -> Codec:
    if scheme == "pow2":
        return PowerOfTwo.fit(weight, exponent_bits)
    if scheme == "int8_sym":
        return SymmetricInt8.fit(weight)
    raise ConfigError(f"unknown quantization scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def quantize(codec: Codec, weight: Tensor) -> Tensor:
    """The quantized values of ``weight`` (same shape and dtype)."""
    return codec.decode(codec.encode(weight), weight.dtype)


def _codec_state(codec: Codec) -> dict:
    return {"kind": codec.kind, **asdict(codec)}


def _codec_from_state(state: dict) -> Codec:
    state = dict(state)
    kind = state.pop("kind")
    return PowerOfTwo(**state) if kind == "pow2" else SymmetricInt8(**state)


# --------------------------------------------------------------------------- bit masks

_BITS = 1 << torch.arange(8, dtype=torch.uint8)


def pack_mask(mask: Tensor) -> Tensor:
    """A boolean tensor as bytes, eight positions per byte (row-major, low bit first)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-len(flat)) % 8)).reshape(-1, 8)
    return (flat * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, numel: int) -> Tensor:
    bits = (packed.reshape(-1, 1) & _BITS.to(packed.device)) != 0
    return bits.reshape(-1)[:numel]


# --------------------------------------------------------------------------- coded layers


class CodedWeight(nn.Module):
    """Base of the coded layers: a weight whose marked entries are int8 codes."""

    def __init__(self, shape: torch.Size, mask: Tensor, weight: Tensor, codec: Codec, bias: Tensor | None):
        super().__init__()
        self.shape = torch.Size(shape)
        self.codec = codec
        mask = mask.reshape(-1).bool()
        flat = weight.detach().reshape(-1)
        self.weight_values = nn.Parameter(flat[~mask].clone())
        self.register_buffer("weight_codes", codec.encode(flat[mask]))
        self.register_buffer("weight_positions", pack_mask(mask))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def coded_mask(self) -> Tensor:
        return unpack_mask(self.weight_positions, self.shape.numel()).reshape(self.shape)

    def dense_weight(self) -> Tensor:
        """The float weight. Inference (eval mode, no autograd) decodes once and reuses it
        until the stored tensors change, as a deployment decodes at load time."""
        if self.training or torch.is_grad_enabled():
            return self._decode()
        stored = (self.weight_values, self.weight_codes, self.weight_positions)
        key = tuple((t._version, t.data_ptr(), t.device) for t in stored)
        cached = self.__dict__.get("_decoded")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_decoded"] = (key, self._decode())
        return cached[1]

    def _decode(self) -> Tensor:
        mask = self.coded_mask.reshape(-1)
        flat = torch.empty(self.shape.numel(), dtype=self.weight_values.dtype, device=self.weight_values.device)
        flat = flat.masked_scatter(~mask, self.weight_values)
        flat = flat.masked_scatter(mask, self.codec.decode(self.weight_codes, flat.dtype))
        return flat.reshape(self.shape)

    def get_extra_state(self) -> dict:
        return {"codec": _codec_state(self.codec), "shape": list(self.shape)}

    def set_extra_state(self, state: dict) -> None:
        self.codec = _codec_from_state(state["codec"])
        if torch.Size(state["shape"]) != self.shape:
            raise ValueError(f"coded weight shape {state['shape']} does not match {list(self.shape)}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the number of coded entries is data: take the sizes from what is loaded
        for name in ("weight_values", "weight_codes"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                current = getattr(self, name)
                resized = torch.empty(state_dict[key].shape, dtype=current.dtype, device=current.device)
                if isinstance(current, nn.Parameter):
                    self.weight_values = nn.Parameter(resized)
                else:
                    self.register_buffer(name, resized)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CodedLinear(CodedWeight):
    def __init__(self, linear: nn.Linear, mask: Tensor, codec: Codec):
        super().__init__(linear.weight.shape, mask, linear.weight, codec, linear.bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, coded={len(self.weight_codes)}"


class CodedConv2d(CodedWeight):
    def __init__(self, conv: nn.Conv2d, mask: Tensor, codec: Codec):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError("coded convolutions support numeric zero padding only")
        super().__init__(conv.weight.shape, mask, conv.weight, codec, conv.bias)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, stride={self.stride}, padding={self.padding}, coded={len(self.weight_codes)}"


QUANTIZABLE = (nn.Linear, nn.Conv2d)


def coded_layer(module: nn.Module, mask: Tensor, codec: Codec) -> CodedWeight:
    """The coded replacement of a linear or conv layer, with ``mask`` marking the coded entries."""
    if isinstance(module, nn.Linear):
        return CodedLinear(module, mask, codec)
    if isinstance(module, nn.Conv2d):
        return CodedConv2d(module, mask, codec)
    raise ConfigError(f"cannot code the weights of a {type(module).__name__}")


def load_coded(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Load a state dict saved from a coded model into a fresh dense model of the same build."""
    from .factorize import replace_module

    for key in state_dict:
        if not key.endswith(".weight_codes"):
            continue
        path = key.removesuffix(".weight_codes")
        module = model.get_submodule(path)
        placeholder = coded_layer(module, torch.zeros(module.weight.shape, dtype=torch.bool), PowerOfTwo(0))
        replace_module(model, path, placeholder)
    model.load_state_dict(state_dict)
    return model


def coded_summary(model: nn.Module) -> dict[str, float]:
    """How many weights of ``model`` are stored as codes, out of all coded-layer weights."""
    coded = total = 0
    for module in model.modules():
        if isinstance(module, CodedWeight):
            coded += len(module.weight_codes)
            total += module.shape.numel()
    return {"coded_weights": coded, "weights": total, "fraction": coded / total if total else math.nan}
