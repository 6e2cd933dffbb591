"""Diagonal curvature of the mean cross-entropy loss with respect to chosen parameters.

The quantity is ``h_i = d²E / dθ_i²`` (or an approximation of it), where ``E`` is the mean
cross-entropy over one batch; the per-batch diagonals are then **averaged** over batches.
FairQuantize's reference code sums them instead; with equal batch counts per group the two
differ by a constant factor and rank weights identically, and the mean does not depend on
the number of batches. With a short last batch its samples weigh a little more than the
others (each batch counts once); use a batch size that divides the data to avoid that.

Only part of the network is differentiated. The caller splits it at a module: ``features``
are the inputs of that module, computed once without gradients (:func:`features_before`),
and ``head`` is everything from that module to the logits (:func:`sequential_tail` builds it
for ``nn.Sequential`` containers; any module mapping features to logits works). The target
parameters must live in ``head``. The head runs in eval mode (dropout off) while the
curvature is computed, and its modes are restored afterwards. Samples must not interact
inside the head (no train-mode batch norm), since the estimators rely on per-sample terms.

Estimators (:data:`ESTIMATORS`):

``ggn_exact``
    Exact diagonal of the generalised Gauss–Newton matrix ``(1/B) Σ_n J_nᵀ (diag(p) − p pᵀ) J_n``.
    The CE Hessian in the logits factors as ``S Sᵀ`` with the C columns ``√p_c (e_c − p)``,
    so the diagonal is ``(1/B) Σ_n Σ_c (J_nᵀ s_nc)²``: C vector-Jacobian products per sample,
    batched in one vmapped backward pass. When each output is linear in any single target
    entry (ReLU/linear/max-pool nets, and one factor of a U·diag(s)·V product) this *is* the
    Hessian diagonal, because the dropped term carries ``∂²f/∂θ_i² = 0``.
``ggn_mc``
    The same with one sampled column ``e_ŷ − p``, ``ŷ ~ p``: unbiased for ``ggn_exact``.
``empirical_fisher``
    Mean over samples of the squared per-sample gradient (one column ``p − e_y``). Not the
    Hessian and not an unbiased estimate of it; it only resembles the GGN where the model's
    predictive distribution matches the labels. (The square of the batch-mean gradient would
    be a different and invalid quantity.)
``hutchinson``
    ``mean_j z_j ⊙ H z_j`` over ``hutchinson_samples`` Rademacher vectors per batch, with
    Hessian-vector products by double backward: unbiased, noisy, exact second-order terms.
``hessian_exact``
    The exact Hessian diagonal, one Hessian-vector product per target entry. Only for small
    parameter sets (tests, a single small factor block).

How the GGN-type products are evaluated (``strategy``): with ``"auto"``, targets that are the
weight/bias of an ``nn.Linear`` used once on 2-D inputs are handled from that layer's inputs
and its output gradients (never forming per-sample gradients: memory ~ C·B·out); every other
case, or ``strategy="per_sample"``, uses ``torch.func`` per-sample VJPs whose memory is about
``chunk · C · (#target entries)``, chunked over samples to stay below ``max_elements``.

Cost accounting (:class:`Curvature`): all counts are in *passes over the given data through
the head* (one unit = every sample once), whatever the batch size.

* ``forward_passes``: forward evaluations of the head (1.0 for every estimator, plus one
  more when ``auto`` had to fall back to the per-sample path after a probing forward).
* ``backward_passes``: backward-equivalents, i.e. vector-Jacobian products per sample:
  C for ``ggn_exact``, 1 for ``ggn_mc``/``empirical_fisher``; for ``hutchinson`` 1 (the
  gradient) + 2 per probe vector, and for ``hessian_exact`` 1 + 2 per target entry, since a
  Hessian-vector product re-traverses the gradient graph (about a forward plus a backward).
* ``backward_sweeps``: reverse-mode calls, where one vmapped call carrying many vectors
  counts once (``ggn_exact``: 1.0). This is the wall-clock-relevant number on a GPU.

None of this includes the caller's no-grad forward of the network up to the split point, nor
the cost of the head relative to the whole network: for FairLRF's FC-2 factors the head is
FC-2..FC-3, a small fraction of a VGG forward/backward.

Whole networks (:func:`network_curvature`): the same quantities for every conv and linear
weight of a model (FairPrune, FairQuantize). The GGN-type estimators run on BackPACK
(``DiagGGNExact``, ``DiagGGNMC``, ``SumGradSquared``) on a converted copy of the model
(``use_converter=True``: functional flattens, in-place ReLUs and residual additions become
modules BackPACK understands); ``backend="autograd"`` instead treats the whole model as the
head of :func:`diagonal_curvature` (any architecture, slower; see the perf benchmarks).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

__all__ = [
    "APPROXIMATIONS",
    "ESTIMATORS",
    "Curvature",
    "diagonal_curvature",
    "features_before",
    "network_curvature",
    "per_group_curvature",
    "prunable_weights",
    "sequential_tail",
]

# Probe vectors per vmapped Hessian-vector-product call. Fixed (not a parameter) so that a
# seed always gives the same Rademacher draws.
_HVP_CHUNK = 32

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, ...]]
Params = Mapping[str, nn.Parameter | str] | Iterable[nn.Parameter | str]


@dataclass(frozen=True)
class Curvature:
    """Diagonal curvature per target (same shapes as the parameters) and what it cost."""

    diag: dict[str, Tensor]
    estimator: str
    samples: int
    batches: int
    forward_passes: float
    backward_passes: float
    backward_sweeps: float

    @property
    def passes(self) -> dict[str, float]:
        """The counts in the shape of :attr:`Outcome.passes`."""
        return {"forward": self.forward_passes, "backward": self.backward_passes}


@dataclass(frozen=True)
class _Target:
    label: str  # key in the result
    name: str  # parameter name inside the head
    param: nn.Parameter


@dataclass
class _Batch:
    head: nn.Module
    targets: list[_Target]
    x: Tensor
    y: Tensor
    generator: torch.Generator
    hutchinson_samples: int
    strategy: str
    max_elements: int


@dataclass
class _BatchResult:
    diag: list[Tensor]  # aligned with the targets
    forwards: float  # per sample
    backwards: float
    sweeps: float


# ---------------------------------------------------------------------------------------------
# public API


def diagonal_curvature(
    head: nn.Module,
    features: Data,
    params: Params,
    estimator: str = "ggn_exact",
    *,
    batch_size: int | None = None,
    generator: torch.Generator | int | None = None,
    hutchinson_samples: int = 100,
    strategy: str = "auto",
    max_elements: int = 2**26,
) -> Curvature:
    """Batch-averaged diagonal curvature of the mean CE loss of ``head`` w.r.t. ``params``.

    ``features`` is either a pair ``(x, y)`` of tensors, cut into consecutive batches of
    ``batch_size`` rows (``None``: one batch), or an iterable of ``(x, y, ...)`` batches
    (then ``batch_size`` must be ``None``). ``params`` is a mapping ``label -> parameter``
    (results keyed by label), or parameters / parameter names of ``head`` (results keyed by
    their names in ``head``). ``generator`` (a ``torch.Generator``, a seed, or ``None`` for
    seed 0) drives ``hutchinson`` and ``ggn_mc``; the draws are made on the generator's
    device, so a CPU generator gives the same numbers for CPU and CUDA heads.
    ``strategy`` and ``max_elements`` (a per-chunk memory bound in tensor elements) only
    affect how the GGN-type estimators are evaluated, not their value (see the module notes).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown curvature estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")
    if strategy not in ("auto", "per_sample"):
        raise ValueError(f"strategy must be 'auto' or 'per_sample', got {strategy!r}")
    if hutchinson_samples < 1:
        raise ValueError(f"hutchinson_samples must be at least 1, got {hutchinson_samples}")
    targets = _resolve_targets(head, params)
    device = targets[0].param.device
    gen = _as_generator(generator)
    run = ESTIMATORS[estimator]

    totals = [torch.zeros_like(t.param, memory_format=torch.contiguous_format) for t in targets]
    samples = batches = 0
    forwards = backwards = sweeps = 0.0
    with _evaluation(head), torch.enable_grad():
        for x, y in _batches(features, batch_size):
            x, y = x.to(device), y.to(device, torch.long)
            n = len(y)
            part = run(_Batch(head, targets, x, y, gen, hutchinson_samples, strategy, max_elements))
            for total, d in zip(totals, part.diag):
                total += d.detach()
            samples += n
            batches += 1
            forwards += n * part.forwards
            backwards += n * part.backwards
            sweeps += n * part.sweeps
    if batches == 0:
        raise ValueError("diagonal_curvature: no data")
    return Curvature(
        diag={t.label: total / batches for t, total in zip(targets, totals)},
        estimator=estimator,
        samples=samples,
        batches=batches,
        forward_passes=forwards / samples,
        backward_passes=backwards / samples,
        backward_sweeps=sweeps / samples,
    )


def per_group_curvature(
    head: nn.Module,
    features_by_group: Mapping[int, Data],
    params: Params,
    estimator: str = "ggn_exact",
    *,
    generator: torch.Generator | int | None = None,
    **options,
) -> dict[int, Curvature]:
    """:func:`diagonal_curvature` for each group, in the mapping's order.

    One generator is shared and consumed group after group, so a seed fixes all groups.
    ``result[g].diag`` is the per-parameter dict; ``result[g].passes`` its cost.
    """
    gen = _as_generator(generator)
    return {
        group: diagonal_curvature(head, data, params, estimator, generator=gen, **options)
        for group, data in features_by_group.items()
    }


class _Stop(Exception):
    """Raised by the capture hook to skip the rest of the forward pass."""


@torch.no_grad()
def features_before(model: nn.Module, module_path: str, x: Tensor, *, batch_size: int | None = None) -> Tensor:
    """The input that ``model.get_submodule(module_path)`` receives for ``x``, without gradients.

    The model runs in eval mode (modes are restored) and stops as soon as the module is reached.
    ``x`` is moved to the model's device and processed in chunks of ``batch_size`` rows.
    """
    module = model.get_submodule(module_path)
    captured: list[Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Stop

    first = next(model.parameters(), None)
    device = first.device if first is not None else x.device
    handle = module.register_forward_pre_hook(grab)
    try:
        with _evaluation(model):
            for chunk in _row_chunks(x, batch_size):
                try:
                    model(chunk.to(device))
                except _Stop:
                    continue
                raise RuntimeError(f"features_before: module {module_path!r} was not called")
    finally:
        handle.remove()
    if not captured:
        raise ValueError("features_before: no rows")
    return torch.cat(captured)


def sequential_tail(container: nn.Sequential, start: int | str) -> nn.Sequential:
    """The children of ``container`` from ``start`` (index or child name) on, as a new Sequential.

    The modules are shared, not copied, and keep their names, so ``tail.get_parameter("fc2.weight")``
    is ``container.fc2.weight``. For VGG's ``classifier`` the tail is the whole rest of the model.
    """
    children = list(container.named_children())
    names = [name for name, _ in children]
    if isinstance(start, str):
        if start not in names:
            raise ValueError(f"sequential_tail: no child {start!r} (children: {', '.join(names)})")
        index = names.index(start)
    else:
        index = range(len(children))[start]  # raises IndexError when out of range
    return nn.Sequential(OrderedDict(children[index:]))


# ---------------------------------------------------------------------------------------------
# GGN-type estimators: sums of squared backpropagated columns of a per-sample factor


# A column function maps logits (..., C), labels (...) and uniforms (...) to the K columns
# (..., K, C) of a factor of the per-sample loss curvature in the logits; the estimator is
# (1/B) Σ_n Σ_k (J_nᵀ col_nk)². It must work both batched and per sample under vmap.
Columns = Callable[[Tensor, Tensor, Tensor], Tensor]


def _one_hot(index: Tensor, classes: int, like: Tensor) -> Tensor:
    return F.one_hot(index, classes).to(like.dtype)


def _ggn_columns(logits: Tensor, _y: Tensor, _u: Tensor) -> Tensor:
    # diag(p) − p pᵀ = S Sᵀ with S = diag(√p) − p √pᵀ (uses Σ p = 1); row c below is column c of S
    p = logits.softmax(-1)
    root = p.sqrt()
    return torch.diag_embed(root) - root.unsqueeze(-1) * p.unsqueeze(-2)


def _fisher_columns(logits: Tensor, y: Tensor, _u: Tensor) -> Tensor:
    # the per-sample gradient of CE in the logits
    p = logits.softmax(-1)
    return (p - _one_hot(y, p.shape[-1], p)).unsqueeze(-2)


def _mc_columns(logits: Tensor, _y: Tensor, u: Tensor) -> Tensor:
    # ŷ ~ p by inverse CDF; E[(e_ŷ − p)(e_ŷ − p)ᵀ] = diag(p) − p pᵀ
    p = logits.softmax(-1)
    classes = p.shape[-1]
    sampled = (p.cumsum(-1) < u.unsqueeze(-1)).sum(-1).clamp(max=classes - 1)
    return (_one_hot(sampled, classes, p) - p).unsqueeze(-2)


class _NotLinear(Exception):
    """The Linear shortcut does not apply; ``spent`` says whether a forward pass was used up."""

    def __init__(self, spent: bool):
        super().__init__()
        self.spent = spent


def _factor_estimator(columns: Columns, width: Callable[[int], float], sampled: bool):
    def estimate(batch: _Batch) -> _BatchResult:
        u = _uniforms(batch) if sampled else torch.zeros(len(batch.y), device=batch.x.device)
        wasted = 0.0
        if batch.strategy == "auto":
            try:
                sums, classes = _linear_sums(batch, columns, u)
            except _NotLinear as reason:
                wasted = 1.0 if reason.spent else 0.0
            else:
                return _BatchResult([s / len(batch.y) for s in sums], 1.0, width(classes), 1.0)
        sums, classes = _per_sample_sums(batch, columns, u)
        return _BatchResult([s / len(batch.y) for s in sums], 1.0 + wasted, width(classes), 1.0)

    return estimate


def _uniforms(batch: _Batch) -> Tensor:
    u = torch.rand(len(batch.y), generator=batch.generator, device=batch.generator.device, dtype=torch.float64)
    return u.to(batch.x.device)


def _linear_sums(batch: _Batch, columns: Columns, u: Tensor) -> tuple[list[Tensor], int]:
    """Σ_n Σ_k (J_nᵀ col_nk)² for weights/biases of nn.Linear layers, from layer-level quantities.

    A zero "probe" is added to each layer output, so that the batched gradient w.r.t. the probe
    is every sample's output gradient (samples are independent), and in-place ops downstream
    (ReLU(inplace=True)) cannot alter what is differentiated. The per-sample weight gradient
    is g_n x_nᵀ, so Σ_n Σ_k (g_nk x_nᵀ)² = Σ_n (Σ_k g_nk²) (x_n²)ᵀ: no per-sample gradients.
    """
    modules = _linear_owners(batch.head, batch.targets)
    inputs: dict[nn.Module, Tensor] = {}
    probes: dict[nn.Module, Tensor] = {}
    calls: Counter = Counter()

    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        calls[module] += 1
        inputs[module] = args[0].detach()
        probes[module] = torch.zeros_like(out, requires_grad=True)
        return out + probes[module]

    handles = [m.register_forward_hook(hook) for m in set(modules.values())]
    try:
        with _grad_only_for(batch.head, ()):
            logits = batch.head(batch.x)
    finally:
        for handle in handles:
            handle.remove()
    if any(calls[m] != 1 or inputs[m].dim() != 2 for m in set(modules.values())):
        raise _NotLinear(spent=True)

    cols = columns(logits.detach(), batch.y, u)  # (B, K, C)
    order = list(probes)
    grads = torch.autograd.grad(
        logits, [probes[m] for m in order], grad_outputs=cols.transpose(0, 1).contiguous(),
        is_grads_batched=True, allow_unused=True,
    )
    squared = {
        m: (g.square().sum(0) if g is not None else torch.zeros_like(probes[m]))  # (B, out)
        for m, g in zip(order, grads)
    }
    sums = []
    for target in batch.targets:
        module = modules[target.label]
        g2 = squared[module]
        if target.param is module.weight:
            sums.append(g2.T @ inputs[module].square())
        else:
            sums.append(g2.sum(0))
    return sums, logits.shape[-1]


def _linear_owners(head: nn.Module, targets: list[_Target]) -> dict[str, nn.Linear]:
    """The nn.Linear owning each target, or _NotLinear when some target has none (or is shared)."""
    uses = Counter(id(p) for _, p in head.named_parameters(remove_duplicate=False))
    owners = {}
    for target in targets:
        path, _, attr = target.name.rpartition(".")
        module = head.get_submodule(path)
        if not isinstance(module, nn.Linear) or attr not in ("weight", "bias") or uses[id(target.param)] != 1:
            raise _NotLinear(spent=False)
        owners[target.label] = module
    return owners


def _per_sample_sums(batch: _Batch, columns: Columns, u: Tensor) -> tuple[list[Tensor], int]:
    """Σ_n Σ_k (J_nᵀ col_nk)² for any targets, via per-sample VJPs vmapped over columns and samples."""
    names = [t.name for t in batch.targets]
    primals = {t.name: t.param.detach() for t in batch.targets}
    with torch.no_grad():  # one sample, to size the chunks
        width, classes = columns(batch.head(batch.x[:1]), batch.y[:1], u[:1]).shape[1:]
    entries = sum(t.param.numel() for t in batch.targets)
    chunk = max(1, batch.max_elements // (width * entries))

    def one_sample(x: Tensor, y: Tensor, u_n: Tensor) -> dict[str, Tensor]:
        logits, pullback = vjp(lambda p: functional_call(batch.head, p, (x.unsqueeze(0),)).squeeze(0), primals)
        (grads,) = vmap(pullback)(columns(logits, y, u_n))  # each (K, *shape)
        return {name: grads[name].square().sum(0) for name in names}

    with _grad_only_for(batch.head, ()):
        per_sample = vmap(one_sample, chunk_size=chunk if chunk < len(batch.y) else None)(batch.x, batch.y, u)
    return [per_sample[name].sum(0) for name in names], classes


# ---------------------------------------------------------------------------------------------
# estimators from Hessian-vector products (double backward)


def _loss_gradients(batch: _Batch) -> list[Tensor]:
    loss = F.cross_entropy(batch.head(batch.x), batch.y)
    return list(torch.autograd.grad(loss, [t.param for t in batch.targets], create_graph=True))


def _hvp(grads: list[Tensor], params: list[Tensor], vectors: list[Tensor]) -> list[Tensor]:
    """H v for a batch of vectors v (leading dim; one tensor per param) in one vmapped backward.

    ``grads`` are the loss gradients w.r.t. ``params``, built with ``create_graph=True``.
    """
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    zeros = [torch.zeros((len(vectors[0]), *p.shape), dtype=p.dtype, device=p.device) for p in params]
    if not live:  # the loss is linear in every target
        return zeros
    products = torch.autograd.grad(
        [grads[i] for i in live], params, grad_outputs=[vectors[i] for i in live],
        is_grads_batched=True, retain_graph=True, allow_unused=True,
    )
    return [hv if hv is not None else z for hv, z in zip(products, zeros)]


def _hutchinson(batch: _Batch) -> _BatchResult:
    params = [t.param for t in batch.targets]
    m = batch.hutchinson_samples
    with _grad_only_for(batch.head, params):
        grads = _loss_gradients(batch)
        sums = [torch.zeros_like(p) for p in params]
        for start in range(0, m, _HVP_CHUNK):
            k = min(_HVP_CHUNK, m - start)
            zs = [_rademacher((k, *p.shape), batch.generator).to(p) for p in params]
            for total, z, hz in zip(sums, zs, _hvp(grads, params, zs)):
                total += (z * hz).sum(0)
    return _BatchResult([s / m for s in sums], 1.0, 1.0 + 2.0 * m, 1.0 + math.ceil(m / _HVP_CHUNK))


def _hessian_exact(batch: _Batch) -> _BatchResult:
    """Row i of a block, H_i,: = (H e_i)ᵀ, for unit vectors e_i in chunks; keep entry i of each."""
    params = [t.param for t in batch.targets]
    diags, calls = [], 0
    with _grad_only_for(batch.head, params):
        grads = _loss_gradients(batch)
        for p, g in zip(params, grads):
            flat = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            for start in range(0, p.numel(), _HVP_CHUNK):
                idx = torch.arange(start, min(start + _HVP_CHUNK, p.numel()), device=p.device)
                rows = torch.arange(len(idx), device=p.device)
                units = torch.zeros((len(idx), p.numel()), dtype=p.dtype, device=p.device)
                units[rows, idx] = 1
                (hv,) = _hvp([g], [p], [units.view(len(idx), *p.shape)])
                flat[idx] = hv.reshape(len(idx), -1)[rows, idx]
                calls += 1
            diags.append(flat.view_as(p))
    entries = sum(p.numel() for p in params)
    return _BatchResult(diags, 1.0, 1.0 + 2.0 * entries, 1.0 + calls)


def _rademacher(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device, dtype=torch.int8)
    return bits * 2 - 1


ESTIMATORS: dict[str, Callable[[_Batch], _BatchResult]] = {
    "ggn_exact": _factor_estimator(_ggn_columns, width=lambda c: float(c), sampled=False),
    "ggn_mc": _factor_estimator(_mc_columns, width=lambda c: 1.0, sampled=True),
    "empirical_fisher": _factor_estimator(_fisher_columns, width=lambda c: 1.0, sampled=False),
    "hutchinson": _hutchinson,
    "hessian_exact": _hessian_exact,
}


# What each estimator is; the approximations are named as such in every run's info.
APPROXIMATIONS: dict[str, str] = {
    "ggn_exact": "exact GGN diagonal (equals the Hessian diagonal for piecewise-linear networks)",
    "ggn_mc": "approximation: one-sample Monte-Carlo GGN diagonal (unbiased for ggn_exact)",
    "empirical_fisher": "approximation: mean squared per-sample gradient (not an unbiased GGN/Hessian estimate)",
    "hutchinson": "approximation: Hutchinson estimate of the Hessian diagonal (unbiased, noisy)",
    "hessian_exact": "exact Hessian diagonal (one Hessian-vector product per entry; small targets only)",
}


# ---------------------------------------------------------------------------------------------
# whole networks

# BackPACK extension and the attribute it fills, per estimator it covers
_BACKPACK = {"ggn_exact": "diag_ggn_exact", "ggn_mc": "diag_ggn_mc", "empirical_fisher": "sum_grad_squared"}
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[str]:
    """Names of every conv and linear ``weight`` of ``model`` (biases never), in module order.

    A module whose weight is currently reparametrized by a mask (``weight_orig``) has no
    ``weight`` parameter: bake the masks in first (:func:`masks.finalize_masks`).
    """
    names = []
    for path, module in model.named_modules():
        if isinstance(module, _WEIGHTED):
            if "weight" not in module._parameters:
                raise ValueError(f"module {path!r} has a masked weight; finalize the masks first")
            names.append(f"{path}.weight" if path else "weight")
    return names


def network_curvature(
    model: nn.Module,
    data_by_group: Mapping[int, Data],
    estimator: str = "ggn_exact",
    *,
    params: Iterable[str] | None = None,
    generator: torch.Generator | int | None = None,
    batch_size: int | None = None,
    backend: str = "backpack",
) -> dict[int, Curvature]:
    """Per-group diagonal curvature of the mean CE loss w.r.t. whole-network weights.

    ``data_by_group`` maps a group to an ``(x, y)`` pair (cut into ``batch_size`` rows) or to
    an iterable of ``(x, y, ...)`` batches; per-batch diagonals are averaged, as in
    :func:`diagonal_curvature`. ``params`` are parameter names of ``model`` (default:
    :func:`prunable_weights`); ``result[g].diag[name]`` has the parameter's shape. The model
    is evaluated in eval mode (dropout off, batch norm with its running statistics) and is
    not modified: BackPACK works on a deep copy.

    ``backend="backpack"`` (``ggn_exact``, ``ggn_mc``, ``empirical_fisher``) needs every
    module on the path to the logits to be one BackPACK supports (linear, conv, pooling,
    eval-mode batch norm, activations, dropout, flatten, residual sums).
    ``backend="autograd"`` (and always ``hutchinson``, ``hessian_exact``) differentiates the
    whole model with :func:`diagonal_curvature`. ``ggn_mc`` draws its labels from a seed
    taken from ``generator``, so a seed fixes every group.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown curvature estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")
    if backend not in ("backpack", "autograd"):
        raise ValueError(f"backend must be 'backpack' or 'autograd', got {backend!r}")
    names = list(prunable_weights(model) if params is None else params)
    if not names:
        raise ValueError("network_curvature: no target parameters")
    missing = [name for name in names if name not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"network_curvature: not parameters of the model: {', '.join(missing)}")
    gen = _as_generator(generator)
    if backend == "autograd" or estimator not in _BACKPACK:
        return per_group_curvature(
            model, data_by_group, names, estimator, generator=gen, batch_size=batch_size, strategy="per_sample"
        )
    copy, loss_fn = _backpack_copy(model, names)
    return {
        group: _backpack_curvature(copy, loss_fn, names, data, estimator, gen, batch_size)
        for group, data in data_by_group.items()
    }


def _backpack_copy(model: nn.Module, names: list[str]) -> tuple[nn.Module, nn.Module]:
    from backpack import extend

    copy = deepcopy(model).eval()
    for name, p in copy.named_parameters():
        p.requires_grad_(name in names)  # BackPACK skips frozen parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's notes on traced control flow
        extended = extend(copy, use_converter=True)
    found = dict(extended.named_parameters())
    if any(name not in found for name in names):
        raise ValueError("network_curvature: BackPACK's converter renamed parameters; use backend='autograd'")
    return extended, extend(nn.CrossEntropyLoss())


def _backpack_curvature(
    model: nn.Module, loss_fn: nn.Module, names: list[str], data: Data, estimator: str,
    gen: torch.Generator, batch_size: int | None,
) -> Curvature:
    from backpack import backpack
    from backpack.extensions import DiagGGNExact, DiagGGNMC, SumGradSquared

    extension = {"ggn_exact": DiagGGNExact, "ggn_mc": DiagGGNMC, "empirical_fisher": SumGradSquared}[estimator]()
    field = _BACKPACK[estimator]
    params = {name: model.get_parameter(name) for name in names}
    device = next(iter(params.values())).device
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    samples = batches = 0
    classes = 0
    for x, y in _batches(data, batch_size):
        x, y = x.to(device), y.to(device, torch.long)
        seed = int(torch.randint(2**62, (1,), generator=gen))
        rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BackPACK's note on full backward hooks
            torch.manual_seed(seed)  # BackPACK's MC sampling draws from the global generator
            model.zero_grad(set_to_none=True)
            logits = model(x)
            with backpack(extension):
                loss_fn(logits, y).backward()
        # SumGradSquared sums squares of the (1/B-scaled) gradients of the mean loss
        scale = len(y) if estimator == "empirical_fisher" else 1
        for name, p in params.items():
            totals[name] += getattr(p, field).detach() * scale
            delattr(p, field)
        classes = logits.shape[-1]
        samples += len(y)
        batches += 1
    model.zero_grad(set_to_none=True)
    if batches == 0:
        raise ValueError("network_curvature: no data")
    return Curvature(
        diag={name: total / batches for name, total in totals.items()},
        estimator=estimator,
        samples=samples,
        batches=batches,
        forward_passes=1.0,
        backward_passes=float(classes) if estimator == "ggn_exact" else 1.0,
        backward_sweeps=1.0,
    )


# ---------------------------------------------------------------------------------------------
# plumbing


def _resolve_targets(head: nn.Module, params: Params) -> list[_Target]:
    names = {id(p): name for name, p in head.named_parameters()}

    def find(item: nn.Parameter | str) -> tuple[str, nn.Parameter]:
        if isinstance(item, str):
            return item, head.get_parameter(item)
        if id(item) not in names:
            raise ValueError("diagonal_curvature: a target parameter is not a parameter of `head`")
        return names[id(item)], item

    if isinstance(params, Mapping):
        targets = [_Target(str(label), *find(item)) for label, item in params.items()]
    else:
        targets = [_Target(name, name, p) for name, p in map(find, params)]
    if not targets:
        raise ValueError("diagonal_curvature: no target parameters")
    if len({id(t.param) for t in targets}) != len(targets):
        raise ValueError("diagonal_curvature: a parameter is targeted twice")
    return targets


def _batches(features: Data, batch_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(features, (tuple, list)) and len(features) == 2 and isinstance(features[0], Tensor):
        x, y = features
        if len(x) != len(y):
            raise ValueError(f"features and labels differ in length ({len(x)} vs {len(y)})")
        yield from zip(_row_chunks(x, batch_size), _row_chunks(y, batch_size))
        return
    if batch_size is not None:
        raise ValueError("batch_size applies to an (x, y) pair; an iterable of batches is used as given")
    for batch in features:
        yield batch[0], batch[1]


def _row_chunks(x: Tensor, size: int | None) -> Iterator[Tensor]:
    if size is not None and size < 1:
        raise ValueError(f"batch_size must be positive, got {size}")
    if size is None or size >= len(x):
        if len(x):
            yield x
        return
    yield from x.split(size)


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


@contextmanager
def _evaluation(module: nn.Module):
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _grad_only_for(module: nn.Module, keep: Iterable[Tensor]):
    """Let only ``keep`` require grad, so autograd builds no graph for the other parameters."""
    keep_ids = {id(p) for p in keep}
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep_ids)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
