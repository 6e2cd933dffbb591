"""Model registry, builders, layer lookup and the cache-only pretrained loading."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError, UnknownName
from fairsqueeze.measure.footprint import footprint
from fairsqueeze.core.registry import MODELS
from fairsqueeze.models.base import cached_weights_path, create_model, linear_layers, resolve_layer
from fairsqueeze.methods.toolbox.factorize import FactorizedLinear, replace_module
from fairsqueeze.core.vision import torchvision

SMALL_IMAGE = (3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, input_shape, options",
    [
        ("mlp", (7,), {}),
        ("mlp", (2, 3, 4), {"hidden": (8,), "dropout": 0.2}),
        ("vgg11", (3, 64, 48), {"width": 1 / 16, "hidden": 32, "batch_norm": True}),
        ("vgg11_narrow", SMALL_IMAGE, {}),
        ("vgg11_narrow", (1, 64, 64), {}),
        ("resnet18", SMALL_IMAGE, {}),
        ("resnet18", (1, 32, 32), {}),
        ("vit_small", SMALL_IMAGE, {}),
        ("vit_small", (1, 16, 16), {"num_layers": 1}),
    ],
)
def test_forward_shape(name, input_shape, options):
    model = create_model(name, input_shape, 5, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_paper_vgg_parameter_counts_and_forward():
    # docs/methods.md §1.5: conv 9,217,728 weights + 2,752 biases, then 4608-4096-4096-C
    assert n_params(create_model("vgg11_paper", (3, 112, 112), 114)) == 45_347_314
    model = create_model("vgg11_paper", (3, 112, 112), 2).eval()
    assert n_params(model) == 44_888_450
    assert footprint(model)["stored_bytes"] == 4 * 44_888_450
    fc = dict(model.classifier.named_children())
    assert (fc["fc1"].in_features, fc["fc1"].out_features) == (4608, 4096)
    assert (fc["fc2"].in_features, fc["fc2"].out_features) == (4096, 4096)
    assert (fc["fc3"].in_features, fc["fc3"].out_features) == (4096, 2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 2)


def test_vgg_width_and_classifier_layout():
    model = create_model("vgg11", (3, 64, 96), 3, width=0.25, hidden=40, dropout=0.1)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert list(dict(model.classifier.named_children())) == [
        "fc1", "relu1", "drop1", "fc2", "relu2", "drop2", "fc3"
    ]
    assert model.classifier.fc1.in_features == 128 * 2 * 3  # channels x H/32 x W/32
    assert model.classifier.drop1.p == 0.1
    tiny = create_model("vgg11", SMALL_IMAGE, 2, width=1e-3, hidden=4)
    assert all(c.out_channels >= 1 for c in tiny.features if isinstance(c, nn.Conv2d))


def test_mlp_layer_names_and_classifier():
    model = create_model("mlp", (6,), 4, hidden=(10, 8, 5), dropout=0.3)
    layers = linear_layers(model)
    assert list(layers) == ["fc1", "fc2", "fc3", "fc4"]
    assert layers["fc4"].out_features == 4 and layers["fc1"].in_features == 6
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in create_model("mlp", (6,), 4).modules())


def test_unknown_model_and_option_and_bad_values():
    with pytest.raises(UnknownName, match="vgg11"):
        create_model("vgg12", SMALL_IMAGE, 2)
    with pytest.raises(ConfigError, match="'depth'"):
        create_model("mlp", (4,), 2, depth=3)
    with pytest.raises(ConfigError, match="'width'"):
        create_model("vgg11_paper", (3, 112, 112), 2, width=0.5)
    with pytest.raises(ConfigError, match="image inputs"):
        create_model("resnet18", (10,), 2)
    with pytest.raises(ConfigError, match="at least 32x32"):
        create_model("vgg11_narrow", (3, 16, 16), 2)
    with pytest.raises(ConfigError, match="divisible by patch_size"):
        create_model("vit_small", (3, 30, 30), 2)
    with pytest.raises(ConfigError, match="dropout"):
        create_model("mlp", (4,), 2, dropout=1.5)


def test_registry_lists_models_with_defaults():
    assert {"mlp", "vgg11", "vgg11_paper", "vgg11_narrow", "resnet18", "vit_small"} <= set(MODELS.names())
    assert MODELS.get("mlp").option_defaults() == {"hidden": (64, 32), "dropout": 0.0}
    assert MODELS.get("vgg11").description


def test_resolve_layer_by_path_or_last_component():
    model = create_model("vgg11_narrow", SMALL_IMAGE, 2)
    assert resolve_layer(model, "fc2") == ("classifier.fc2", model.classifier.fc2)
    assert resolve_layer(model, "classifier.fc3")[1] is model.classifier.fc3
    with pytest.raises(ConfigError, match="classifier.fc1, classifier.fc2, classifier.fc3"):
        resolve_layer(model, "fc9")
    # a factorized layer is still found under its old name
    replace_module(model, "classifier.fc2", FactorizedLinear(256, 256, 4))
    path, layer = resolve_layer(model, "fc2")
    assert path == "classifier.fc2" and isinstance(layer, FactorizedLinear)


def test_resolve_layer_ambiguous_name_asks_for_full_path():
    model = create_model("vit_small", (3, 16, 16), 2, num_layers=2)
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_layer(model, "0")
    assert "heads.head" in linear_layers(model)
    # attention reads its projection weights directly, so they are not offered as targets
    assert not any("self_attention" in path for path in linear_layers(model))


def test_pretrained_without_cache_warns_and_trains_from_scratch(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="fairsqueeze.models"):
        model = create_model("resnet18", SMALL_IMAGE, 3, pretrained=True)
    assert "trains from scratch" in caplog.text
    assert model.fc.out_features == 3
    assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded


def test_pretrained_resnet_loads_cached_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    source = torchvision.models.resnet18()
    path = tmp_path / "checkpoints" / cached_weights_path(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1).rsplit("/", 1)[-1]
    path.parent.mkdir()
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", SMALL_IMAGE, 7, pretrained=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 7


def test_pretrained_vgg_copies_layers_that_fit(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    donor = create_model("vgg11", SMALL_IMAGE, 2, hidden=16)
    # a torchvision-style checkpoint: features.* as ours, classifier numbered 0/3/6
    state = {k: v for k, v in donor.state_dict().items() if k.startswith("features.")}
    state["classifier.3.weight"] = donor.classifier.fc2.weight.detach().clone()
    state["classifier.3.bias"] = donor.classifier.fc2.bias.detach().clone()
    state["classifier.6.weight"] = torch.zeros(1000, 16)
    path = tmp_path / "checkpoints" / cached_weights_path(
        torchvision.models.VGG11_Weights.IMAGENET1K_V1).rsplit("/", 1)[-1]
    path.parent.mkdir()
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="fairsqueeze.models"):
        model = create_model("vgg11", SMALL_IMAGE, 2, hidden=16, pretrained=True)
    assert torch.equal(model.features[0].weight, donor.features[0].weight)
    assert torch.equal(model.classifier.fc2.weight, donor.classifier.fc2.weight)
    assert "classifier.fc1" in caplog.text and "classifier.fc3" in caplog.text
