"""Whole-network diagonal curvature against autograd oracles (float64 small conv and linear nets)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune
from torch import nn
from torch.func import functional_call

from fairsqueeze.methods.toolbox.curvature import APPROXIMATIONS, ESTIMATORS, network_curvature, prunable_weights
from fairsqueeze.models.base import create_model

DTYPE = torch.float64
BACKENDS = ["backpack", "autograd"]


def conv_net(batch_norm: bool = False, activation=nn.ReLU, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 3, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(3))
    layers += [activation(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 5), activation(), nn.Linear(5, 3)]
    net = nn.Sequential(*layers).to(DTYPE)
    if batch_norm:  # non-trivial running statistics and affine parameters, used in eval mode
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    return net.eval()


def linear_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).to(DTYPE)


def images(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 4, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


def vectors(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


def _loss_of(model: nn.Module, name: str, x, y):
    shape = model.get_parameter(name).shape
    return lambda flat: nn.functional.cross_entropy(functional_call(model, {name: flat.view(shape)}, (x,)), y)


def hessian_diag(model: nn.Module, name: str, x, y) -> torch.Tensor:
    flat = model.get_parameter(name).detach().flatten()
    full = torch.autograd.functional.hessian(_loss_of(model, name, x, y), flat)
    return full.diagonal().view_as(model.get_parameter(name))


def ggn_diag(model: nn.Module, name: str, x) -> torch.Tensor:
    shape = model.get_parameter(name).shape
    flat = model.get_parameter(name).detach().flatten()
    logits = lambda v: functional_call(model, {name: v.view(shape)}, (x,))  # noqa: E731
    jac = torch.autograd.functional.jacobian(logits, flat)  # (N, C, P)
    p = logits(flat).detach().softmax(-1)
    curv = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("ncp,ncd,ndp->p", jac, curv, jac).div(len(x)).view(shape)


def close(actual, expected, atol=1e-10, rtol=1e-7):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build,make_data", [(conv_net, images), (linear_net, vectors),
                                             (lambda: conv_net(batch_norm=True), images)])
def test_ggn_exact_is_the_hessian_diagonal_of_piecewise_linear_nets(backend, build, make_data):
    net = build()
    x, y = make_data()
    curv = network_curvature(net, {0: (x, y)}, "ggn_exact", backend=backend)[0]
    assert list(curv.diag) == prunable_weights(net)
    for name, diag in curv.diag.items():
        close(diag, hessian_diag(net, name, x, y))
    assert curv.estimator == "ggn_exact" and curv.samples == len(y) and curv.backward_passes == 3.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ggn_exact_is_the_gauss_newton_not_the_hessian_for_smooth_nets(backend):
    net = conv_net(activation=nn.Tanh)
    x, y = images()
    curv = network_curvature(net, {0: (x, y)}, "ggn_exact", backend=backend)[0]
    name = "0.weight"
    close(curv.diag[name], ggn_diag(net, name, x))
    assert not torch.allclose(curv.diag[name], hessian_diag(net, name, x, y), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empirical_fisher_is_the_mean_squared_per_sample_gradient(backend):
    net = conv_net()
    x, y = images()
    curv = network_curvature(net, {0: (x, y)}, "empirical_fisher", backend=backend)[0]
    for name, diag in curv.diag.items():
        p = net.get_parameter(name)
        squares = [torch.autograd.grad(nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), p)[0] ** 2
                   for i in range(len(y))]
        close(diag, torch.stack(squares).mean(0))
        # a different quantity from the Hessian diagonal, labelled as an approximation
        assert not torch.allclose(diag, hessian_diag(net, name, x, y), atol=1e-6)
    assert APPROXIMATIONS["empirical_fisher"].startswith("approximation")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ggn_mc_is_seeded_and_unbiased(backend):
    net = conv_net()
    x, y = images(n=8)
    exact = network_curvature(net, {0: (x, y)}, "ggn_exact")[0].diag
    one = network_curvature(net, {0: (x, y)}, "ggn_mc", generator=3, backend=backend)[0].diag
    again = network_curvature(net, {0: (x, y)}, "ggn_mc", generator=3, backend=backend)[0].diag
    other = network_curvature(net, {0: (x, y)}, "ggn_mc", generator=4, backend=backend)[0].diag
    for name in exact:
        assert torch.equal(one[name], again[name])
    assert any(not torch.equal(one[n], other[n]) for n in exact)
    # the mean of many single-sample draws approaches the exact GGN (relative error ~ 1/sqrt(draws))
    draws = 400
    batches = [(x, y)] * draws  # every batch is the same data: the mean over batches is the mean over draws
    mean = network_curvature(net, {0: batches}, "ggn_mc", generator=0, backend=backend)[0].diag
    for name in exact:
        rel = (mean[name] - exact[name]).norm() / exact[name].norm()
        assert rel < 0.1, (name, float(rel))
        assert not torch.allclose(one[name], exact[name], rtol=1e-3)  # a single draw is noisy


def test_hessian_exact_and_hutchinson_cover_whole_networks():
    net = conv_net(activation=nn.Tanh)
    x, y = images(n=6)
    names = ["0.weight", "6.weight"]
    exact = network_curvature(net, {0: (x, y)}, "hessian_exact", params=names)[0].diag
    for name in names:
        close(exact[name], hessian_diag(net, name, x, y))
    # unbiased: 100 batches x 100 probes bring the relative error to ~0.2 (one batch: ~1.7)
    hutch = network_curvature(net, {0: [(x, y)] * 100}, "hutchinson", params=names, generator=0)[0].diag
    for name in names:
        assert (hutch[name] - exact[name]).norm() / exact[name].norm() < 0.4


def test_groups_batches_and_targets():
    net = conv_net()
    x, y = images(n=12)
    groups = {1: (x[:6], y[:6]), 0: [(x[6:9], y[6:9]), (x[9:], y[9:])]}
    curv = network_curvature(net, groups, params=["4.weight"])
    assert list(curv) == [1, 0] and list(curv[0].diag) == ["4.weight"]
    close(curv[1].diag["4.weight"], hessian_diag(net, "4.weight", x[:6], y[:6]))
    halves = (hessian_diag(net, "4.weight", x[6:9], y[6:9]) + hessian_diag(net, "4.weight", x[9:], y[9:])) / 2
    close(curv[0].diag["4.weight"], halves)
    assert curv[0].batches == 2 and curv[0].samples == 6
    by_size = network_curvature(net, {0: (x[6:], y[6:])}, params=["4.weight"], batch_size=3)[0]
    close(by_size.diag["4.weight"], halves)


def test_model_is_left_untouched():
    net = conv_net(batch_norm=True).train()
    net[0].weight.requires_grad_(False)
    state = copy.deepcopy(net.state_dict())
    x, y = images()
    network_curvature(net, {0: (x, y)})
    assert net.training and all(m.training for m in net.modules())
    assert not net[0].weight.requires_grad and net[5].weight.requires_grad
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key  # running statistics included
    assert all(p.grad is None and not hasattr(p, "diag_ggn_exact") for p in net.parameters())


def test_default_targets_are_conv_and_linear_weights_only():
    net = create_model("vgg11_narrow", (3, 32, 32), 4, batch_norm=True)
    names = prunable_weights(net)
    assert len(names) == 8 + 3 and all(n.endswith(".weight") for n in names)
    assert "features.1.weight" not in names  # a batch-norm scale
    torch.nn.utils.prune.identity(net.classifier.fc1, "weight")
    with pytest.raises(ValueError, match="finalize"):
        prunable_weights(net)


@pytest.mark.parametrize("model,options", [("vgg11_narrow", {"batch_norm": True}), ("vgg11_narrow", {}),
                                           ("resnet18", {}), ("mlp", {})])
def test_backpack_on_the_model_zoo_matches_autograd(model, options):
    torch.manual_seed(0)
    net = create_model(model, (3, 32, 32), 4, **options)
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    names = prunable_weights(net)
    names = [names[0], names[len(names) // 2], names[-1]]
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 3])
    fast = network_curvature(net, {0: (x, y)}, params=names)[0].diag
    slow = network_curvature(net, {0: (x, y)}, params=names, backend="autograd")[0].diag
    for name in names:
        assert fast[name].shape == net.get_parameter(name).shape
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-3, atol=1e-9 * float(slow[name].abs().max()))
        assert slow[name].abs().max() > 0


def test_bad_arguments():
    net = conv_net()
    data = {0: images()}
    with pytest.raises(ValueError, match="estimator"):
        network_curvature(net, data, "nope")
    with pytest.raises(ValueError, match="backend"):
        network_curvature(net, data, backend="nope")
    with pytest.raises(ValueError, match="not parameters"):
        network_curvature(net, data, params=["9.weight"])
    assert set(APPROXIMATIONS) == set(ESTIMATORS)
