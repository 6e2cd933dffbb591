"""Permanent masks and physical filter removal."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fairsqueeze.methods.toolbox.masks import apply_masks, current_masks, finalize_masks, remove_filters
from fairsqueeze.models.base import create_model


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def test_masked_weights_stay_zero_through_training():
    net = mlp()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, 4] = False
    before = net[0].weight.detach().clone()
    apply_masks(net, {"0.weight": mask})
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    reference = copy.deepcopy(mlp())
    with torch.no_grad():
        reference[0].weight[~mask] = 0
    torch.testing.assert_close(net(x), reference(x))
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert torch.all(net[0].weight[~mask] == 0)
    assert torch.all(net[0].weight[mask] != before[mask])  # the kept entries did train
    finalize_masks(net)
    assert sorted(n for n, _ in net.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert isinstance(net[0].weight, nn.Parameter) and not current_masks(net)
    assert torch.all(net[0].weight[~mask] == 0) and int((net[0].weight == 0).sum()) == 4
    assert set(net.state_dict()) == set(mlp().state_dict())


def test_masks_combine_and_are_reported():
    net = mlp()
    first = torch.ones(4, 5, dtype=torch.bool)
    first[0] = False
    second = torch.ones(4, 5, dtype=torch.bool)
    second[:, 0] = False
    apply_masks(net, {"0.weight": first})
    apply_masks(net, {"0.weight": second, "2.weight": torch.ones(3, 4)})
    masks = current_masks(net)
    assert set(masks) == {"0.weight", "2.weight"}
    assert torch.equal(masks["0.weight"], first & second) and masks["2.weight"].all()
    with pytest.raises(ValueError, match="shape"):
        apply_masks(net, {"2.bias": torch.ones(4)})


def _zero_filters(model, conv_path, bn_path, channels):
    with torch.no_grad():
        conv = model.get_submodule(conv_path)
        conv.weight[channels] = 0
        conv.bias[channels] = 0
        if bn_path:  # a BN channel with zero scale and shift outputs zero
            bn = model.get_submodule(bn_path)
            bn.weight[channels] = 0
            bn.bias[channels] = 0


@pytest.mark.parametrize("batch_norm", [False, True])
def test_removing_dead_filters_keeps_the_function(batch_norm):
    torch.manual_seed(0)
    model = create_model("vgg11_narrow", (3, 32, 32), 4, batch_norm=batch_norm, dropout=0.0).eval()
    first, last = "features.0", ("features.25" if batch_norm else "features.18")
    bn_first, bn_last = ("features.1", "features.26") if batch_norm else (None, None)
    assert model.get_submodule(last).out_channels == 64
    _zero_filters(model, first, bn_first, [1, 5])
    _zero_filters(model, last, bn_last, [0, 7, 63])
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    params = sum(p.numel() for p in model.parameters())
    keep_first = torch.ones(8, dtype=torch.bool)
    keep_first[[1, 5]] = False
    keep_last = torch.ones(64, dtype=torch.bool)
    keep_last[[0, 7, 63]] = False
    out = remove_filters(model, x, {first: keep_first, last: keep_last})
    assert out is model
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert model.get_submodule(first).out_channels == 6 and model.features[4 if batch_norm else 3].in_channels == 6
    assert model.classifier.fc1.in_features == 61  # 32 px / 32 = one position per channel
    # removed: 2 first filters (3x3x3 + bias) and their 2 x 16 input slices of the next conv,
    # 3 last filters (64x3x3 + bias) and 3 x 256 inputs of fc1, plus 2 x (2 + 3) BN scales/shifts
    removed = 2 * (27 + 1) + 2 * 16 * 9 + 3 * (64 * 9 + 1) + 3 * 256 + (10 if batch_norm else 0)
    assert sum(p.numel() for p in model.parameters()) == params - removed


def test_coupled_residual_outputs_and_bad_requests():
    model = create_model("resnet18", (3, 32, 32), 4).eval()
    x = torch.randn(1, 3, 32, 32)
    keep = torch.ones(64, dtype=torch.bool)
    keep[:3] = False
    with pytest.raises(ValueError, match="coupled"):
        remove_filters(model, x, {"layer1.0.conv2": keep, "layer1.1.conv2": keep})
    with pytest.raises(ValueError, match="every filter"):
        remove_filters(model, x, {"layer1.0.conv1": torch.zeros(64, dtype=torch.bool)})
    with pytest.raises(ValueError, match="filters"):
        remove_filters(model, x, {"layer1.0.conv1": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="Conv2d"):
        remove_filters(model, x, {"layer1.0.bn1": keep})
    remove_filters(model, x, {"layer1.0.conv1": keep, "layer1.0.conv2": keep})
    assert model.layer1[0].conv1.out_channels == 61 and model.layer1[1].conv2.out_channels == 61
    assert model(x).shape == (1, 4)


def test_removing_hidden_neurons_of_an_mlp():
    net = mlp()
    with torch.no_grad():
        net[0].weight[1] = 0
        net[0].bias[1] = -1.0  # a dead ReLU unit
    x = torch.randn(6, 5)
    expected = net(x)
    keep = torch.tensor([True, False, True, True])
    remove_filters(net, x, {"0": keep})
    assert net[0].out_features == 3 and net[2].in_features == 3
    torch.testing.assert_close(net(x), expected)
