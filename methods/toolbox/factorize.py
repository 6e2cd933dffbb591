"""Low-rank surgery: replace a dense linear layer by two smaller ones.

``W ≈ U diag(S) Vᵀ`` is stored as ``first`` (Vᵀ, k x in), ``scale`` (S, k numbers) and
``second`` (U, out x k, plus the original bias). Keeping S as its own k-vector matches the
papers' storage count, and zeroing entries of ``first.weight`` / ``second.weight`` removes
entries of V / U. Rows of V (input neurons) are the *columns* of ``first.weight``.
"""
from __future__ import annotations

import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError


class FactorizedLinear(nn.Module):
    """``y = second(first(x) * scale)``: a rank-``rank`` linear map ``in_features -> out_features``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)
        self.scale = nn.Parameter(torch.ones(rank, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x) * self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int, solver: str = "exact") -> "FactorizedLinear":
        """The best rank-``k`` factorisation of ``linear`` (truncated SVD); ``k`` above the layer's rank is refused."""
        k = checked_rank(k, linear.in_features, linear.out_features)
        weight = linear.weight.detach()
        u, s, vh = truncated_svd(weight, k, solver)
        layer = cls(linear.in_features, linear.out_features, k, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.first.weight.copy_(vh)
            layer.second.weight.copy_(u)
            layer.scale.copy_(s)
            if linear.bias is not None:
                layer.second.bias.copy_(linear.bias)
        layer.train(linear.training)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The ``out x in`` matrix this layer applies: U diag(S) Vᵀ."""
        return (self.second.weight * self.scale) @ self.first.weight

    def to_linear(self) -> nn.Linear:
        """A dense nn.Linear computing the same map (zeroed factor entries included)."""
        weight = self.dense_weight().detach()
        has_bias = self.second.bias is not None
        linear = nn.Linear(self.in_features, self.out_features, bias=has_bias,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if has_bias:
                linear.bias.copy_(self.second.bias)
        return linear


def checked_rank(k: int, in_features: int, out_features: int, layer: str = "the layer") -> int:
    """``k`` itself; a rank above min(in, out) is an error, never silently clamped (the run's
    label would still say the larger k, and the model would grow)."""
    if int(k) < 1:
        raise ConfigError(f"factorization rank k must be at least 1, got {k}")
    if int(k) > min(in_features, out_features):
        raise ConfigError(
            f"k={k} exceeds the rank of {layer} ({out_features}x{in_features}: at most {min(in_features, out_features)})"
        )
    return int(k)


SOLVERS = ("exact", "randomized")
RANDOMIZED_OVERSAMPLING = 16
RANDOMIZED_ITERATIONS = 6


def truncated_svd(weight: torch.Tensor, k: int, solver: str = "exact") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets of ``weight`` (``U``: out x k, ``S``: k, ``Vᵀ``: k x in).

    ``solver="exact"`` is a full LAPACK SVD in float64, so the factors do not depend on
    float32 round-off (minutes for a 4096x4096 layer on a small CPU). ``"randomized"`` is the
    Halko et al. range finder (``torch.svd_lowrank``, k + 16 columns, 6 power iterations, a
    fixed seed): an approximation of the top-k triplets that costs seconds. Either way each
    triplet gets a fixed sign, so the same weights always give the same factors.
    """
    if solver == "exact":
        u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
        u, s, vh = u[:, :k], s[:k], vh[:k]
    elif solver == "randomized":
        q = min(k + RANDOMIZED_OVERSAMPLING, *weight.shape)
        with torch.random.fork_rng(devices=[weight.device] if weight.is_cuda else []):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(weight.to(torch.float64), q=q, niter=RANDOMIZED_ITERATIONS)
        u, s, vh = u[:, :k], s[:k], v[:, :k].T
    else:
        raise ConfigError(f"unknown SVD solver {solver!r} (known: {', '.join(SOLVERS)})")
    u, vh = fix_signs(u, vh)
    return u.to(weight.dtype), s.to(weight.dtype), vh.to(weight.dtype)


def fix_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each pair (u_i, v_i) so the largest-magnitude entry of u_i is positive.

    An SVD is only unique up to such paired flips; LAPACK builds may pick either.
    """
    peaks = u.gather(0, u.abs().argmax(dim=0, keepdim=True)).squeeze(0)
    signs = torch.where(peaks < 0, -1.0, 1.0).to(u.dtype)
    return u * signs, vh * signs[:, None]


def replace_module(model: nn.Module, path: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` at the dotted ``path`` (e.g. ``classifier.fc2`` or ``features.3``); return the old one."""
    parent_path, _, child = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path)
    except AttributeError:
        raise ConfigError(f"no module {parent_path!r} in the model (replacing {path!r})") from None
    children = dict(parent.named_children())
    if child not in children:
        raise ConfigError(f"no module {path!r} in the model")
    setattr(parent, child, new_module)  # also right for Sequential children named "3"
    return children[child]
