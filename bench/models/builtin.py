"""The built-in architectures: an MLP for tabular tasks, VGG-11 (the papers' and a narrow one),
ResNet-18 and a small ViT, each registered under its name with its options."""
from __future__ import annotations

import logging
import math
import numbers
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.vision import torchvision
from fairsqueeze.models.base import load_cached_weights, register_model

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- shared checks


def _image_shape(model_name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model {model_name!r} needs image inputs (channels, height, width), got input shape {input_shape}"
        )
    return input_shape  # type: ignore[return-value]


MAX_WIDTH = 100_000  # units of one hidden layer: wider would not fit a machine's memory next to its neighbours


def _positive(model_name: str, option: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"model {model_name!r}: option {option!r} must be positive, got {value!r}")


def _dropout_rate(model_name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"model {model_name!r}: option 'dropout' must be in [0, 1), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- MLP


@register_model("mlp", "multilayer perceptron on flattened inputs; linear layers fc1..fcN (fcN classifies)")
def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (64, 32),
    dropout: float = 0.0,
) -> nn.Module:
    dropout = _dropout_rate("mlp", dropout)
    if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in hidden):
        raise ConfigError(f"model 'mlp': option 'hidden' must list integer widths in 1..{MAX_WIDTH:,},"
                          f" got {list(hidden)!r}")
    widths = [math.prod(input_shape), *(int(w) for w in hidden), num_classes]
    for w in widths:
        _positive("mlp", "hidden", w)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    last = len(widths) - 1
    for i in range(1, last + 1):
        layers[f"fc{i}"] = nn.Linear(widths[i - 1], widths[i])
        if i < last:
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


# --------------------------------------------------------------------------- VGG-11


class VGG(nn.Module):
    """The torchvision VGG layout (``features`` / ``avgpool`` / ``classifier``), built lean.

    torchvision's constructor always allocates a 25088x4096 classifier that we would throw
    away (about 2 s per build), so the same modules are assembled here; the state-dict keys
    of ``features`` match torchvision's, so its ImageNet weights load unchanged.
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        # no adaptive pooling: the first FC sees the raw C x H/32 x W/32 map, as in FairLRF
        self.avgpool = nn.Identity()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11_channels(width: float) -> list[int | str]:
    """torchvision's VGG-11 layer plan ("A") with every conv width scaled (at least 1)."""
    plan = torchvision.models.vgg.cfgs["A"]
    return [item if item == "M" else max(1, round(int(item) * width)) for item in plan]


def vgg_features(plan: Sequence[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return nn.Sequential(*layers)


def vgg_classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(in_features, hidden),
            relu1=nn.ReLU(inplace=True),
            drop1=nn.Dropout(dropout),
            fc2=nn.Linear(hidden, hidden),
            relu2=nn.ReLU(inplace=True),
            drop2=nn.Dropout(dropout),
            fc3=nn.Linear(hidden, num_classes),
        )
    )


def init_like_torchvision_vgg(model: nn.Module) -> None:
    """Same initial distribution as torchvision's VGG, so training recipes carry over."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and module.bias is not None:
            nn.init.zeros_(module.bias)


def load_vgg_pretrained(model: VGG, model_name: str, batch_norm: bool) -> None:
    """Copy cached ImageNet VGG-11 weights into every layer whose shape still matches."""
    enum = torchvision.models.VGG11_BN_Weights if batch_norm else torchvision.models.VGG11_Weights
    state = load_cached_weights(model_name, enum.IMAGENET1K_V1)
    if state is None:
        return
    renamed = {_torchvision_to_own_key(k): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in usable})
    if fresh:
        log.warning(
            "model %r: pretrained weights do not fit %s; those layers start fresh", model_name, ", ".join(fresh)
        )


# torchvision numbers the classifier's linear layers 0, 3 and 6; ours are named
_CLASSIFIER_NAMES = {"classifier.0.": "classifier.fc1.", "classifier.3.": "classifier.fc2.",
                     "classifier.6.": "classifier.fc3."}


def _torchvision_to_own_key(key: str) -> str:
    for theirs, ours in _CLASSIFIER_NAMES.items():
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


@register_model("vgg11", "torchvision VGG-11, no adaptive pooling, classifier fc1/fc2/fc3; width and hidden scalable")
def build_vgg11(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    hidden: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
    pretrained: bool = False,
) -> nn.Module:
    channels, height, wide = _image_shape("vgg11", input_shape)
    _positive("vgg11", "width", width)
    _positive("vgg11", "hidden", hidden)
    if height < 32 or wide < 32:
        raise ConfigError(f"model 'vgg11': five 2x poolings need inputs of at least 32x32, got {height}x{wide}")
    plan = vgg11_channels(width)
    flat = int(plan[-2]) * (height // 32) * (wide // 32)
    model = VGG(
        vgg_features(plan, channels, bool(batch_norm)),
        vgg_classifier(flat, int(hidden), num_classes, _dropout_rate("vgg11", dropout)),
    )
    init_like_torchvision_vgg(model)
    if pretrained:
        load_vgg_pretrained(model, "vgg11", bool(batch_norm))
    return model


@register_model("vgg11_paper", "FairLRF's VGG-11: no BN, 112x112 input, classifier 4608-4096-4096-C")
def build_vgg11_paper(
    input_shape: tuple[int, ...],
    num_classes: int,
    dropout: float = 0.5,
    pretrained: bool = False,
) -> nn.Module:
    if tuple(input_shape) != (3, 112, 112):
        log.warning(
            "model 'vgg11_paper' expects 3x112x112 inputs, got %s; parameter counts and compression "
            "ratios will differ from the paper's", "x".join(map(str, input_shape)),
        )
    return build_vgg11(input_shape, num_classes, dropout=dropout, pretrained=pretrained)


@register_model("vgg11_narrow", "VGG-11 at 1/8 width with a 256-wide classifier, for CPU runs on 32-64 px inputs")
def build_vgg11_narrow(
    input_shape: tuple[int, ...],
    num_classes: int,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> nn.Module:
    return build_vgg11(input_shape, num_classes, width=1 / 8, hidden=256, dropout=dropout, batch_norm=batch_norm)


# --------------------------------------------------------------------------- ResNet-18


def replace_stem_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A conv like ``conv`` but for ``in_channels`` inputs (ImageNet stems expect 3)."""
    return nn.Conv2d(
        in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
        padding=conv.padding, bias=conv.bias is not None,
    )


@register_model("resnet18", "torchvision ResNet-18; the classifier is the linear layer 'fc'")
def build_resnet18(
    input_shape: tuple[int, ...],
    num_classes: int,
    pretrained: bool = False,
) -> nn.Module:
    channels, _, _ = _image_shape("resnet18", input_shape)
    state = None
    if pretrained:
        state = load_cached_weights("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    if state is None:
        model = torchvision.models.resnet18(num_classes=num_classes)
    else:
        model = torchvision.models.resnet18()
        model.load_state_dict(state)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    if channels != 3:
        model.conv1 = replace_stem_channels(model.conv1, channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# --------------------------------------------------------------------------- ViT


@register_model("vit_small", "small torchvision VisionTransformer for CPU runs; classifier 'heads.head'")
def build_vit_small(
    input_shape: tuple[int, ...],
    num_classes: int,
    patch_size: int = 8,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 128,
    mlp_dim: int = 256,
    dropout: float = 0.0,
) -> nn.Module:
    channels, height, wide = _image_shape("vit_small", input_shape)
    if height != wide or height % patch_size:
        raise ConfigError(
            f"model 'vit_small' needs square inputs divisible by patch_size={patch_size}, got {height}x{wide}"
        )
    if hidden_dim % num_heads:
        raise ConfigError(f"model 'vit_small': hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
    model = torchvision.models.VisionTransformer(
        image_size=height, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=_dropout_rate("vit_small", dropout),
        num_classes=num_classes,
    )
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        fan_in = channels * patch_size * patch_size
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model
