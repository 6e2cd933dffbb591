"""Diagonal curvature estimators against independent autograd oracles (float64, tiny nets)."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import DiagGGNExact
from torch import nn
from torch.func import functional_call

from fairsqueeze.methods.toolbox.curvature import (
    ESTIMATORS,
    diagonal_curvature,
    features_before,
    per_group_curvature,
    sequential_tail,
)
from fairsqueeze.methods.toolbox.factorize import FactorizedLinear

DTYPE = torch.float64
STRATEGIES = ["auto", "per_sample"]


def mlp(activation: nn.Module, d_in: int = 6, hidden: int = 8, classes: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), activation, nn.Linear(hidden, classes)).to(DTYPE)


def data(n: int = 30, d_in: int = 6, classes: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=DTYPE), torch.randint(0, classes, (n,), generator=g)


class Bilinear(nn.Module):
    """The factorised-layer shape: second(first(x) * scale)."""

    def __init__(self, d_in: int = 6, rank: int = 3, classes: int = 4):
        super().__init__()
        torch.manual_seed(2)
        self.first = nn.Linear(d_in, rank, bias=False)
        self.scale = nn.Parameter(torch.rand(rank) + 0.5)
        self.second = nn.Linear(rank, classes)

    def forward(self, x):
        return self.second(self.first(x) * self.scale)


# ---- independent oracles: flatten one parameter and differentiate a pure function of it


def _logits_of(head: nn.Module, name: str, x: torch.Tensor):
    shape = head.get_parameter(name).shape
    return lambda flat: functional_call(head, {name: flat.view(shape)}, (x,))


def hessian_diag(head, name, x, y):
    logits = _logits_of(head, name, x)
    flat = head.get_parameter(name).detach().flatten()
    full = torch.autograd.functional.hessian(lambda v: nn.functional.cross_entropy(logits(v), y), flat)
    return full.diagonal().view_as(head.get_parameter(name)), full


def ggn_diag(head, name, x):
    """(1/N) Σ_n diag(J_nᵀ (diag p_n − p_n p_nᵀ) J_n) from full Jacobians of the logits."""
    logits = _logits_of(head, name, x)
    flat = head.get_parameter(name).detach().flatten()
    jac = torch.autograd.functional.jacobian(logits, flat)  # (N, C, P)
    p = logits(flat).detach().softmax(-1)
    curv = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    ggn = torch.einsum("ncp,ncd,ndq->pq", jac, curv, jac) / len(x)
    return ggn.diagonal().view_as(head.get_parameter(name))


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---- exactness


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["0.weight", "0.bias", "2.weight"])
def test_ggn_equals_hessian_diagonal_for_relu_net(name, strategy):
    head, (x, y) = mlp(nn.ReLU()), data()
    result = diagonal_curvature(head, (x, y), [name], "ggn_exact", strategy=strategy)
    close(result.diag[name], hessian_diag(head, name, x, y)[0])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_ggn_is_the_gauss_newton_not_the_hessian_for_tanh(name, strategy):
    head, (x, y) = mlp(nn.Tanh()), data()
    result = diagonal_curvature(head, (x, y), [name], "ggn_exact", strategy=strategy)
    close(result.diag[name], ggn_diag(head, name, x))
    if name == "0.weight":  # tanh'' ≠ 0: the Hessian has an extra term the GGN drops
        hess = hessian_diag(head, name, x, y)[0]
        assert (hess - result.diag[name]).abs().max() > 1e-3


def test_hessian_exact_matches_autograd_for_tanh():
    head, (x, y) = mlp(nn.Tanh()), data()
    result = diagonal_curvature(head, (x, y), ["0.weight", "2.bias"], "hessian_exact")
    for name in ("0.weight", "2.bias"):
        close(result.diag[name], hessian_diag(head, name, x, y)[0], atol=1e-10)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["first.weight", "scale", "second.weight"])
def test_bilinear_factor_ggn_equals_hessian(name, strategy):
    # the logits are linear in each single entry of one factor, so ∂²f/∂θ_i² = 0;
    # "scale" is not an nn.Linear parameter, so "auto" also exercises the per-sample path
    head, (x, y) = Bilinear(), data()
    head = head.to(DTYPE)
    result = diagonal_curvature(head, (x, y), {name: head.get_parameter(name)}, "ggn_exact", strategy=strategy)
    close(result.diag[name], hessian_diag(head, name, x, y)[0])



def fairlrf_head(d_in: int = 10, d_out: int = 9, rank: int = 4, classes: int = 5) -> nn.Sequential:
    """FairLRF's head in miniature: factorised fc2 -> ReLU -> Dropout -> fc3 (eval mode)."""
    torch.manual_seed(3)
    fc2 = FactorizedLinear(d_in, d_out, rank, dtype=DTYPE)
    with torch.no_grad():
        fc2.scale.uniform_(0.5, 2.0)
    return nn.Sequential(OrderedDict([("fc2", fc2), ("relu2", nn.ReLU()), ("drop2", nn.Dropout(0.5)),
                                      ("fc3", nn.Linear(d_out, classes, dtype=DTYPE))])).eval()


def backpack_twin(head: nn.Sequential) -> nn.Sequential:
    """The same function as plain modules BackPACK knows: fc2's scale S folded into ``first``
    (weight diag(S)·Vᵀ), so our V entry (i, j) has S_i² times the curvature of the folded one."""
    fc2 = head.fc2
    first = nn.Linear(fc2.in_features, fc2.rank, bias=False, dtype=DTYPE)
    second = nn.Linear(fc2.rank, fc2.out_features, dtype=DTYPE)
    with torch.no_grad():
        first.weight.copy_(fc2.scale[:, None] * fc2.first.weight)
        second.weight.copy_(fc2.second.weight)
        second.bias.copy_(fc2.second.bias)
    twin = nn.Sequential(first, second, nn.ReLU(), nn.Dropout(0.5), copy.deepcopy(head.fc3)).eval()
    for p in twin.parameters():
        p.requires_grad_(p is first.weight or p is second.weight)
    return extend(twin)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_ggn_of_fairlrf_factors_equals_backpack_diag_ggn_exact():
    """The diagonal FairLRF uses, per group, against BackPACK's DiagGGNExact (an independent
    implementation) on the same head and data, in float64 where both are exact to round-off."""
    head = fairlrf_head()
    groups = {0: data(n=16, d_in=10, classes=5, seed=20), 1: data(n=16, d_in=10, classes=5, seed=21)}
    params = {"in": head.fc2.first.weight, "out": head.fc2.second.weight}
    ours = per_group_curvature(head, groups, params, "ggn_exact", batch_size=16)
    twin, loss_fn = backpack_twin(head), extend(nn.CrossEntropyLoss())
    for group, (x, y) in groups.items():
        twin.zero_grad(set_to_none=True)
        with backpack(DiagGGNExact()):
            loss_fn(twin(x), y).backward()
        theirs = {"in": twin[0].weight.diag_ggn_exact * head.fc2.scale.detach()[:, None] ** 2,
                  "out": twin[1].weight.diag_ggn_exact}
        for key in params:
            assert theirs[key].abs().max() > 0
            torch.testing.assert_close(ours[group].diag[key], theirs[key], rtol=1e-10, atol=0)


# ---- approximations


def _per_sample_squared_grads(head, name, x, y):
    param = head.get_parameter(name)
    total = torch.zeros_like(param)
    for xi, yi in zip(x, y):
        loss = nn.functional.cross_entropy(head(xi[None]), yi[None])
        (g,) = torch.autograd.grad(loss, param)
        total += g.square()
    return total / len(x)


def _trained(head, x, y, steps=300):
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    return head


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empirical_fisher_is_mean_per_sample_squared_gradient(strategy):
    head, (x, y) = mlp(nn.ReLU()), data()
    result = diagonal_curvature(head, (x, y), ["0.weight", "2.weight"], "empirical_fisher", strategy=strategy)
    for name in ("0.weight", "2.weight"):
        close(result.diag[name], _per_sample_squared_grads(head, name, x, y), atol=1e-12)


def test_empirical_fisher_only_resembles_the_hessian():
    # The empirical Fisher is NOT the Hessian. On a fitted net they correlate; the bound
    # below is loose (the measured Pearson r is about 0.8 here, deterministic for these seeds).
    x, y = data(n=50)
    head = _trained(mlp(nn.ReLU()), x, y)
    ef = diagonal_curvature(head, (x, y), ["2.weight"], "empirical_fisher").diag["2.weight"]
    hess = hessian_diag(head, "2.weight", x, y)[0]
    r = torch.corrcoef(torch.stack([ef.flatten(), hess.flatten()]))[0, 1]
    assert r > 0.5
    assert not torch.allclose(ef, hess, rtol=0.05)


def test_hutchinson_is_unbiased_within_its_standard_error():
    head, (x, y) = mlp(nn.Tanh(), d_in=5), data(d_in=5)
    name, m = "0.weight", 2000
    exact, full = hessian_diag(head, name, x, y)
    result = diagonal_curvature(head, (x, y), [name], "hutchinson", hutchinson_samples=m, generator=7)
    # z_i (Hz)_i = H_ii + Σ_{j≠i} H_ij z_i z_j: variance Σ_{j≠i} H_ij², so the sd of the mean is known
    sd = ((full.square().sum(1) - full.diagonal().square()) / m).sqrt().view_as(exact)
    standardized = (result.diag[name] - exact) / sd
    assert standardized.abs().max() < 4.5  # 40 entries; measured 2.6 for this seed
    # no systematic offset (entries are correlated, so this is a loose bound; measured -0.30)
    assert standardized.mean().abs() < 4 / standardized.numel() ** 0.5
    rel = (result.diag[name] - exact).norm() / exact.norm()
    assert rel < 0.1
    assert result.backward_passes == 1 + 2 * m


def test_hutchinson_and_mc_are_deterministic_per_seed():
    head, (x, y) = mlp(nn.Tanh()), data()
    for estimator in ("hutchinson", "ggn_mc"):
        def run(seed):
            return diagonal_curvature(head, (x, y), ["0.weight"], estimator, hutchinson_samples=40,
                                      generator=torch.Generator().manual_seed(seed)).diag["0.weight"]
        assert torch.equal(run(3), run(3))
        assert not torch.equal(run(3), run(4))


def test_ggn_mc_averages_to_ggn_exact():
    # one sampled label per row: replicating the data 400 times averages 400 draws per sample
    head, (x, y) = mlp(nn.ReLU()), data()
    reps = 400
    mc = diagonal_curvature(head, (x.repeat(reps, 1), y.repeat(reps)), ["2.weight"], "ggn_mc", generator=0)
    exact = diagonal_curvature(head, (x, y), ["2.weight"], "ggn_exact")
    rel = (mc.diag["2.weight"] - exact.diag["2.weight"]).norm() / exact.diag["2.weight"].norm()
    assert rel < 0.05
    assert mc.backward_passes == 1.0
    # both evaluation strategies see the same draws
    fast, slow = (diagonal_curvature(head, (x, y), ["2.weight"], "ggn_mc", generator=0, strategy=s)
                  for s in STRATEGIES)
    close(fast.diag["2.weight"], slow.diag["2.weight"], atol=1e-12)


# ---- batching, counting, plumbing


@pytest.mark.parametrize("estimator", ["ggn_exact", "empirical_fisher", "hutchinson"])
def test_result_is_the_mean_of_per_batch_results(estimator):
    head, (x, y) = mlp(nn.ReLU()), data(n=30)
    names = ["0.weight", "2.bias"]
    opts = dict(hutchinson_samples=8)
    whole = diagonal_curvature(head, (x, y), names, estimator, batch_size=8, generator=5, **opts)
    gen = torch.Generator().manual_seed(5)  # consumed batch after batch, as inside the call
    parts = [diagonal_curvature(head, (x[i:i + 8], y[i:i + 8]), names, estimator, generator=gen, **opts)
             for i in range(0, 30, 8)]
    for name in names:
        close(whole.diag[name], torch.stack([p.diag[name] for p in parts]).mean(0), atol=1e-12)
    assert (whole.samples, whole.batches, whole.forward_passes) == (30, 4, 1.0)
    # the same batches given as an iterable (labels first two entries, extras ignored)
    batches = [(x[i:i + 8], y[i:i + 8], None) for i in range(0, 30, 8)]
    again = diagonal_curvature(head, batches, names, estimator, generator=5, **opts)
    for name in names:
        close(again.diag[name], whole.diag[name], atol=0)


def test_pass_counts():
    head, (x, y) = mlp(nn.ReLU(), classes=4), data(classes=4)
    ggn = diagonal_curvature(head, (x, y), ["2.weight"], "ggn_exact", batch_size=7)
    assert (ggn.forward_passes, ggn.backward_passes, ggn.backward_sweeps) == (1.0, 4.0, 1.0)
    assert ggn.passes == {"forward": 1.0, "backward": 4.0}
    ef = diagonal_curvature(head, (x, y), ["2.weight"], "empirical_fisher")
    assert (ef.forward_passes, ef.backward_passes) == (1.0, 1.0)
    exact = diagonal_curvature(head, (x, y), ["2.bias"], "hessian_exact")
    assert exact.backward_passes == 1 + 2 * 4


def vgg_like(classes: int = 3) -> nn.Module:
    torch.manual_seed(4)
    model = nn.Module()
    model.features = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True))
    model.classifier = nn.Sequential(OrderedDict(
        fc1=nn.Linear(7, 6), relu1=nn.ReLU(inplace=True), drop1=nn.Dropout(0.5),
        fc2=nn.Linear(6, 6), relu2=nn.ReLU(inplace=True), drop2=nn.Dropout(0.5),
        fc3=nn.Linear(6, classes),
    ))
    model.forward = lambda x: model.classifier(model.features(x))
    return model.to(DTYPE)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_split_at_a_module_gives_the_full_network_curvature(strategy):
    model = vgg_like()
    model.train()  # both helpers must switch dropout off and restore the mode
    x, y = data(n=20, d_in=5, classes=3)
    feats = features_before(model, "classifier.fc2", x, batch_size=6)
    with torch.no_grad():
        expected = model.classifier.relu1(model.classifier.fc1(model.features(x)))
    close(feats, expected, atol=1e-12)
    head = sequential_tail(model.classifier, "fc2")
    assert list(dict(head.named_children())) == ["fc2", "relu2", "drop2", "fc3"]
    assert head.get_parameter("fc2.weight") is model.classifier.fc2.weight

    target = {"w": model.classifier.fc2.weight}
    split = diagonal_curvature(head, (feats, y), target, strategy=strategy)
    full = diagonal_curvature(model, (x, y), target, strategy=strategy)
    close(split.diag["w"], full.diag["w"], atol=1e-12)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert sequential_tail(model.classifier, -1)[0] is model.classifier.fc3


def test_per_group_curvature_matches_separate_calls():
    head = mlp(nn.ReLU())
    groups = {0: data(n=12, seed=10), 1: data(n=12, seed=11)}
    both = per_group_curvature(head, groups, ["2.weight"], "hutchinson", generator=9, hutchinson_samples=16)
    gen = torch.Generator().manual_seed(9)
    for g, xy in groups.items():
        alone = diagonal_curvature(head, xy, ["2.weight"], "hutchinson", generator=gen, hutchinson_samples=16)
        close(both[g].diag["2.weight"], alone.diag["2.weight"], atol=0)


def test_bad_arguments():
    head, xy = mlp(nn.ReLU()), data()
    with pytest.raises(ValueError, match="known: ggn_exact"):
        diagonal_curvature(head, xy, ["2.weight"], "diag_hessian")
    with pytest.raises(ValueError, match="not a parameter"):
        diagonal_curvature(head, xy, [nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="batch_size"):
        diagonal_curvature(head, [xy], ["2.weight"], batch_size=4)
    assert set(ESTIMATORS) == {"ggn_exact", "ggn_mc", "empirical_fisher", "hutchinson", "hessian_exact"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    head, (x, y) = mlp(nn.ReLU()), data()
    names = ["0.weight", "2.weight"]
    cpu = {e: diagonal_curvature(head, (x, y), names, e, generator=1, hutchinson_samples=64) for e in ESTIMATORS}
    head = head.cuda()
    for estimator, expected in cpu.items():
        got = diagonal_curvature(head, (x, y), names, estimator, generator=1, hutchinson_samples=64)
        for name in names:
            assert got.diag[name].device.type == "cuda"
            close(got.diag[name].cpu(), expected.diag[name], atol=1e-9)
