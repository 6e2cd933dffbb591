"""Low-rank surgery and storage accounting, checked against the papers' published ratios."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.measure.footprint import compression_ratio, footprint, measure_latency, serialized_size
from fairsqueeze.methods.toolbox.factorize import FactorizedLinear, replace_module
from fairsqueeze.models.base import create_model

FC2 = "classifier.fc2"
FACTORS = (f"{FC2}.first.weight", f"{FC2}.second.weight")


# --------------------------------------------------------------------------- factorization


def random_linear(out_features=12, in_features=9, bias=True, seed=0, dtype=torch.float64) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias, dtype=dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_factorization_reproduces_the_layer(bias):
    linear = random_linear(bias=bias)
    with pytest.raises(ConfigError, match=r"k=100 exceeds the rank of the layer \(12x9: at most 9\)"):
        FactorizedLinear.from_linear(linear, k=100)  # refused, never clamped
    layer = FactorizedLinear.from_linear(linear, k=9)
    assert layer.rank == 9
    assert layer.first.weight.shape == (9, 9) and layer.second.weight.shape == (12, 9)
    assert (layer.second.bias is None) == (not bias)
    x = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))
    torch.testing.assert_close(layer.to_linear().weight, linear.weight)


def test_rank_k_error_is_the_eckart_young_optimum():
    linear = random_linear(out_features=20, in_features=15, seed=1)
    weight = linear.weight.detach().numpy()
    sigma = np.linalg.svd(weight, compute_uv=False)
    for k in (1, 4, 10):
        layer = FactorizedLinear.from_linear(linear, k)
        np.testing.assert_allclose(layer.scale.detach().numpy(), sigma[:k], rtol=1e-12)
        error = np.sum((layer.to_linear().weight.detach().numpy() - weight) ** 2)
        np.testing.assert_allclose(error, np.sum(sigma[k:] ** 2), rtol=1e-10)
        dense = layer.to_linear()
        x = torch.randn(3, 15, dtype=torch.float64)
        torch.testing.assert_close(layer(x), dense(x))
        torch.testing.assert_close(dense.bias, linear.bias)


def test_float32_layer_stays_float32_and_accurate():
    linear = random_linear(out_features=30, in_features=25, dtype=torch.float32, seed=2)
    layer = FactorizedLinear.from_linear(linear, 25)
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    torch.testing.assert_close(layer.dense_weight(), linear.weight, atol=1e-5, rtol=1e-5)


def test_factorization_is_deterministic_and_rejects_rank_zero():
    linear = random_linear(seed=3)
    a, b = FactorizedLinear.from_linear(linear, 3), FactorizedLinear.from_linear(linear, 3)
    assert torch.equal(a.first.weight, b.first.weight) and torch.equal(a.second.weight, b.second.weight)
    with pytest.raises(ConfigError, match="at least 1"):
        FactorizedLinear.from_linear(linear, 0)


def test_zeroed_factor_entries_change_the_map():
    linear = random_linear(seed=4)
    layer = FactorizedLinear.from_linear(linear, 5)
    with torch.no_grad():
        layer.second.weight[:, 3:] = 0  # what sparse SVD does to the tail of each U row
    expected = (layer.second.weight[:, :3] * layer.scale[:3]) @ layer.first.weight[:3]
    torch.testing.assert_close(layer.to_linear().weight, expected)


def test_replace_module_handles_sequential_children():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Sequential(nn.Linear(6, 3)))
    new = FactorizedLinear.from_linear(model[2][0], 2)
    old = replace_module(model, "2.0", new)
    assert isinstance(old, nn.Linear) and model[2][0] is new
    assert model(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ConfigError, match="2.5"):
        replace_module(model, "2.5", nn.Identity())


# --------------------------------------------------------------------------- published ratios


@pytest.fixture(scope="module")
def paper_vgg():
    """vgg11_paper per class count, built once: the ratios depend on shapes and zeros only."""
    built: dict[int, nn.Module] = {}

    def get(num_classes: int) -> nn.Module:
        if num_classes not in built:
            built[num_classes] = create_model("vgg11_paper", (3, 112, 112), num_classes)
        return built[num_classes]

    return get


@contextmanager
def fc2_swapped(model: nn.Module, module: nn.Module):
    old = replace_module(model, FC2, module)
    try:
        yield model
    finally:
        replace_module(model, FC2, old)


def factorized_fc2(k: int) -> FactorizedLinear:
    # random factors stand in for the SVD of the 4096x4096 layer: same shapes, no zeros
    torch.manual_seed(0)
    return FactorizedLinear(4096, 4096, k)


def paper_ratio(model: nn.Module, layer: FactorizedLinear, zero=None) -> float:
    dense = footprint(model)
    if zero is not None:
        with torch.no_grad():
            zero(layer)
    with fc2_swapped(model, layer):
        return compression_ratio(dense, footprint(model, sparse_storage=FACTORS))


@pytest.mark.parametrize(
    "num_classes, k, expected",
    [(114, 64, 1.559), (2, 1, 1.596)],  # FairLRF Tables 1-2, truncated SVD of FC-2
)
def test_truncated_svd_ratio_matches_paper(paper_vgg, num_classes, k, expected):
    assert round(paper_ratio(paper_vgg(num_classes), factorized_fc2(k)), 3) == expected


def zero_tails(rows: int, keep: int):
    """Zero entries j >= keep in ``rows`` input rows of V and ``rows`` output rows of U."""

    def apply(layer: FactorizedLinear) -> None:
        layer.first.weight[keep:, :rows] = 0  # V's rows are first.weight's columns
        layer.second.weight[:rows, keep:] = 0

    return apply


def test_slr_sparse_ratio_matches_paper(paper_vgg):
    # sr 0.5, rr 0.5, k 64: 2048 rows x 32 zeros in each factor
    assert round(paper_ratio(paper_vgg(114), factorized_fc2(64), zero_tails(2048, 32)), 3) == 1.566


def test_fairlrf_row_zeroing_ratio_matches_paper(paper_vgg):
    # sr 0.4, rr 0, k 64: floor(0.4 * 4096) = 1638 whole rows in each factor
    assert round(paper_ratio(paper_vgg(114), factorized_fc2(64), zero_tails(1638, 0)), 3) == 1.570


def test_ratio_follows_the_storage_formula_for_any_rank(paper_vgg):
    # rank k: 2 * 4096 * k factor entries + k singular values replace 4096^2 weights; the bias stays
    k = 8
    expected = 44_888_450 / (44_888_450 - 4096 * 4096 + 2 * 4096 * k + k)
    assert paper_ratio(paper_vgg(2), factorized_fc2(k)) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- footprint rules


def small_net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def test_footprint_counts_every_parameter():
    fp = footprint(small_net())
    params = 10 * 8 + 8 + 8 * 3 + 3
    assert fp["params"] == fp["nonzeros"] == fp["stored_params"] == params
    assert fp["bytes_by_dtype"] == {"float32": 4 * params}
    assert fp["stored_bytes"] == 4 * params


def test_unstructured_zeros_are_not_savings_unless_sparse_storage():
    model = small_net()
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    dense = footprint(model)
    assert dense["nonzeros"] == dense["params"] - 40
    assert dense["stored_params"] == dense["params"]
    sparse = footprint(model, sparse_storage=("0.weight",))
    assert sparse["stored_params"] == dense["params"] - 40
    assert sparse["stored_bytes"] == dense["stored_bytes"] - 160
    assert compression_ratio(dense, sparse) == pytest.approx(dense["stored_bytes"] / sparse["stored_bytes"])


def test_half_precision_halves_the_bytes():
    full, half = footprint(small_net()), footprint(small_net(torch.float16))
    assert half["bytes_by_dtype"] == {"float16": full["bytes_by_dtype"]["float32"] // 2}
    assert compression_ratio(full, half) == 2.0


class CodedLinear(nn.Module):
    """A stand-in quantized layer: part of the weights kept as int8 codes."""

    def __init__(self, dense_entries: int, coded_entries: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dense_entries))
        self.register_buffer("weight_codes", torch.ones(coded_entries, dtype=torch.int8))
        self.register_buffer("running_hint", torch.ones(1000))  # not stored: no _codes suffix


def test_codes_buffers_are_stored_and_give_the_fairquantize_ratio():
    dense = {"stored_bytes": 4 * 1000}
    coded = footprint(CodedLinear(800, 200))  # p = 0.2 of the weights in 8 bits
    assert coded["bytes_by_dtype"] == {"float32": 3200, "int8": 200}
    assert coded["params"] == 1000
    assert round(compression_ratio(dense, coded), 3) == 1.176  # FairQuantize, Table 2


def test_unknown_sparse_storage_name_is_rejected():
    with pytest.raises(ValueError, match="nope.weight"):
        footprint(small_net(), sparse_storage=("nope.weight",))


def test_serialized_size_and_latency():
    model = small_net().train()
    assert serialized_size(model) >= footprint(model)["stored_bytes"]
    seconds = measure_latency(model, torch.randn(4, 10), repeats=5, warmup=1)
    assert 0 < seconds < 1
    assert model.training  # the caller's mode is restored
