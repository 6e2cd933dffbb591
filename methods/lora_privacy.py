"""Fairness-aware LoRA under a privacy split (arXiv 2503.05684): Erm, Unl, Adv, Orth.

Two parties adapt one frozen backbone with LoRA. The *developer* holds inputs and labels
(x, y) and trains the task adapter and head; the *fairness auditor* holds inputs and the
sensitive attribute (x, s). They exchange adapter weights and nothing else:

- ``lora_erm``: the developer trains alone (the fairness-unaware baseline);
- ``lora_unlearn``: the auditor trains an adapter that predicts s and sends it; the developer
  subtracts it from the backbone (task-arithmetic negation), then trains as Erm;
- ``lora_adversarial``: rounds of developer training, then the auditor fits an adversary on
  the adapted features and updates the shared adapter against it; the adversary stays home;
- ``lora_orthogonal``: the developer's loss adds ``orth_weight * sum_l ||A_y A_s^T||_F^2``
  against the auditor's sensitive adapter (O-LoRA-style orthogonal input subspaces).

The paper's text was not available, only its abstract: the loss details, the rank, the
targets, the adversary objective and the number of rounds are reconstructions, each a
named parameter below. The structure keeps the sides apart: :class:`Developer` is built
from :class:`DeveloperRows` (reading ``s`` raises :class:`WithheldColumn`),
:class:`Auditor` from :class:`AuditorRows` (reading ``y`` raises), and everything that
passes between them goes through :class:`Channel` as serialised :class:`AdapterMessage`\\ s,
refused unless it is exactly the agreed adapter. The frozen backbone is ImageNet weights
when cached, otherwise the architecture trained on the developer's share alone
(:func:`developer_backbone`): the task's dense model has used the auditor's labels.
"""
from __future__ import annotations

import abc

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.hashing import array_hash, config_hash
from fairsqueeze.core.files import file_lock
from fairsqueeze.models.base import cached_weights_path
from fairsqueeze.datasets.base import Split, cache_root, content_digest
from fairsqueeze.engine.training import Batch, Trainer
from fairsqueeze.spec.train import TrainConfig
from fairsqueeze.core.vision import torchvision

from .base import Cost, Method, MethodContext, Outcome, register_method
from .toolbox.lora import (
    AdapterMessage, LoraSpec, adapter_layout, adapter_parameters, attach, export_adapter, head_path, import_adapter,
    negate_into, resolve_targets, subspace_overlap, unwrap,
)
from .toolbox.reinit import reinitialise

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the two sides' data


class WithheldColumn(AttributeError):
    """A side of the privacy split asked for a column it does not hold."""


@dataclass(frozen=True)
class DeveloperRows:
    """The developer's training rows: inputs and labels. There is no sensitive attribute."""

    x: Any
    y: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def s(self):
        raise WithheldColumn("the developer side holds no sensitive attribute")


@dataclass(frozen=True)
class AuditorRows:
    """The auditor's rows: inputs and the sensitive attribute. There are no labels."""

    x: Any
    s: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.s)

    @property
    def y(self):
        raise WithheldColumn("the auditor side holds no labels")


@dataclass(frozen=True)
class SideView:
    """What one side trains on: its rows and the task's batch transform (the Trainer's task)."""

    train: DeveloperRows | AuditorRows
    prepare: Callable[[Any, bool], torch.Tensor]


def split_roles(train: Split, auditor_share: float, seed: int) -> tuple[DeveloperRows, AuditorRows]:
    """Disjoint random shares of the training split: (x, y) to the developer, (x, s) to the auditor.

    Auditor rows of unknown group (s < 0) are dropped: they cannot teach it anything.
    """
    order = np.random.default_rng(seed).permutation(len(train))
    cut = int(round(auditor_share * len(train)))
    dev, aud = np.sort(order[cut:]), np.sort(order[:cut])
    aud = aud[train.s[aud] >= 0]
    if len(dev) == 0 or len(np.unique(train.s[aud])) < 2:
        raise ConfigError("auditor_share leaves one side without rows (or the auditor with fewer than 2 groups)")
    return (DeveloperRows(train.x[dev], train.y[dev], train.index[dev]),
            AuditorRows(train.x[aud], train.s[aud], train.index[aud]))


class Channel:
    """The only way between the sides: an adapter message, serialised and read back.

    Both sides agreed on one adapter spec for the shared backbone; the channel refuses any
    message that is not exactly that adapter: its role one of the known roles, its spec
    the agreed one, its tensors the LoRA factors the spec puts on the backbone, each of the
    right shape (:func:`~.toolbox.lora.adapter_layout`). Each side gets its own copy
    (nothing is shared by reference); ``log`` keeps the bytes that crossed, so a test or a
    user can check what was disclosed.
    """

    def __init__(self, spec: LoraSpec, backbone: nn.Module):
        self.spec = spec
        self.layout = adapter_layout(backbone, spec)
        self.log: list[bytes] = []

    def deliver(self, message: AdapterMessage) -> AdapterMessage:
        if not isinstance(message, AdapterMessage):
            raise TypeError(f"only adapter messages cross between the sides, not {type(message).__name__}")
        data = message.to_bytes()
        received = AdapterMessage.from_bytes(data)
        if received.spec != self.spec:
            raise ValueError(f"the message's adapter spec {received.spec} is not the agreed {self.spec}")
        received.check_layout(self.layout)
        self.log.append(data)
        return received


# --------------------------------------------------------------------------- the sides


def _cross_entropy_y(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch.x), batch.y)


class Developer:
    """Holds the backbone and (x, y); trains the task adapter and the classifier head."""

    def __init__(self, backbone: nn.Module, data: SideView, spec: LoraSpec, cfg: TrainConfig,
                 device: torch.device, seed: int):
        self.backbone, self.data, self.spec, self.cfg = backbone, data, spec, cfg
        self.device, self.seed = device, seed
        self.model: nn.Module | None = None
        self.trainer: Trainer | None = None
        self.sensitive: AdapterMessage | None = None
        self.orth_weight = 0.0
        self.factors: dict[str, nn.Parameter] = {}

    def unlearn(self, message: AdapterMessage, strength: float) -> None:
        """Subtract ``strength`` times the auditor's adapter from the backbone (before training)."""
        if self.model is not None:
            raise RuntimeError("unlearning edits the backbone, before the task adapter exists")
        self.backbone = negate_into(self.backbone, message, strength)

    def keep_orthogonal_to(self, message: AdapterMessage, weight: float) -> None:
        """Add ``weight * sum_l ||A_y A_s^T||_F^2`` against ``message``'s adapter to the loss."""
        self.sensitive, self.orth_weight = message, float(weight)

    def _start(self) -> None:
        torch.manual_seed(self.seed)  # adapter initialisation
        self.model = attach(self.backbone, self.spec, "task")
        head = self.model.get_base_model().get_submodule(head_path(self.backbone))
        head.requires_grad_(True)  # the classifier trains in full, as LoRA fine-tuning does
        self.factors = adapter_parameters(self.model, "task")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainer = Trainer(self.model, self.data, self.cfg, self.device, self.seed, loss=self.loss,
                               parameters=params, desc="developer")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        loss = _cross_entropy_y(model, batch)
        if self.sensitive is not None and self.orth_weight:
            loss = loss + self.orth_weight * subspace_overlap(self.factors, self.sensitive.weights)
        return loss

    def train(self) -> AdapterMessage:
        """``cfg.epochs`` epochs on (x, y); returns the task adapter."""
        if self.model is None:
            self._start()
        self.trainer.fit()
        return export_adapter(self.model, "task", self.spec, role="task")

    def receive(self, message: AdapterMessage) -> None:
        import_adapter(self.model, "task", message)

    def adapted_model(self) -> nn.Module:
        return unwrap(self.model)


def fit_probe(features: np.ndarray, s: np.ndarray, groups: int, c: float) -> tuple[nn.Linear, float]:
    """The adversary: multinomial logistic regression of s on the features (scikit-learn,
    L2 penalty with inverse strength ``c``), as a linear layer with one logit per group, and
    its accuracy on those rows.

    A binary fit has one logit difference; it becomes logits (0, w.x + b), which give the
    same softmax. A group absent from the rows gets a logit of -30 (probability ~0).
    """
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=c, max_iter=1000).fit(features, s)
    weight, bias = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    layer = nn.Linear(features.shape[1], groups)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-30.0)
        layer.weight[fit.classes_] = torch.as_tensor(weight, dtype=layer.weight.dtype)
        layer.bias[fit.classes_] = torch.as_tensor(bias, dtype=layer.bias.dtype)
    return layer, float(fit.score(features, s))


def _features(backbone: nn.Module) -> nn.Module:
    """The backbone up to its classifier: the head becomes the identity."""
    features = copy.deepcopy(backbone)
    features.set_submodule(head_path(backbone), nn.Identity())
    return features


class Auditor:
    """Holds the backbone and (x, s); answers with adapters only.

    Its sensitive head and adversary never leave it. ``adversary_accuracy`` keeps, per
    adversarial round, how well the freshly fitted adversary predicts s on the auditor's
    own rows (an aggregate the auditor may report; no per-person prediction leaves).
    """

    def __init__(self, backbone: nn.Module, data: SideView, spec: LoraSpec, cfg: TrainConfig,
                 device: torch.device, seed: int):
        self.data, self.spec, self.cfg, self.device, self.seed = data, spec, cfg, device, seed
        self.width = backbone.get_submodule(head_path(backbone)).in_features
        self.groups = int(data.train.s.max()) + 1
        self.features = _features(backbone)
        self.trainers: list[Trainer] = []
        self.adversary_accuracy: list[float] = []
        self.eval_rows = 0

    def sensitive_adapter(self) -> AdapterMessage:
        """Train an adapter (with a private head) to predict s; send the adapter alone."""
        torch.manual_seed(self.seed)
        adapted = attach(copy.deepcopy(self.features), self.spec, "sensitive")
        head = nn.Linear(self.width, self.groups)
        net = nn.Sequential(adapted, head)
        params = [*adapter_parameters(adapted, "sensitive").values(), *head.parameters()]
        trainer = Trainer(net, self.data, self.cfg, self.device, self.seed, parameters=params, desc="auditor",
                          loss=lambda m, b: nn.functional.cross_entropy(m(b.x), b.s))
        self.trainers.append(trainer)
        trainer.fit()
        return export_adapter(adapted, "sensitive", self.spec, role="sensitive")

    def start_adversary(self, weight: float, objective: str, c: float) -> None:
        torch.manual_seed(self.seed)
        self.shared = attach(copy.deepcopy(self.features), self.spec, "task")
        self.weight, self.objective, self.c = float(weight), objective, float(c)

        def fool_loss(model, batch):
            logits = self.adversary(self.shared(batch.x))
            if self.objective == "uniform":  # cross-entropy to the uniform distribution over groups
                return -logits.log_softmax(1).mean()
            return -nn.functional.cross_entropy(logits, batch.s)  # gradient reversal

        if self.weight:
            # the update has no other loss term, and Adam ignores a loss's scale: the weight
            # scales the step size instead
            fool_cfg = dataclasses.replace(self.cfg, epochs=1, lr=self.cfg.lr * self.weight)
            self.fool_adversary = Trainer(self.shared, self.data, fool_cfg, self.device, self.seed, loss=fool_loss,
                                          parameters=adapter_parameters(self.shared, "task").values(), desc="auditor")
            self.trainers.append(self.fool_adversary)

    def adversarial_update(self, message: AdapterMessage) -> AdapterMessage:
        """Fit the adversary on the received adapter's features, then move the adapter against it."""
        import_adapter(self.shared, "task", message)
        features = self._features().numpy()
        self.adversary, accuracy = fit_probe(features, self.data.train.s, self.groups, self.c)
        self.adversary.to(self.device).requires_grad_(False)
        self.adversary_accuracy.append(accuracy)
        if self.weight:
            self.fool_adversary.fit()
        return export_adapter(self.shared, "task", self.spec, role="task")

    @torch.no_grad()
    def _features(self, batch_size: int = 256) -> torch.Tensor:
        """The adapted representation of every auditor row (eval mode, one pass)."""
        self.shared.eval()
        rows = self.data.train
        out = [self.shared(self.data.prepare(rows.x[i : i + batch_size], False).to(self.device)).cpu()
               for i in range(0, len(rows), batch_size)]
        self.eval_rows += len(rows)
        return torch.cat(out)

    def cost(self) -> Cost:
        total = sum((trainer.cost.as_cost() for trainer in self.trainers), Cost())
        if self.eval_rows:  # adversarial rounds: one pass for the features the adversary fits on
            total += Cost({"features_forward": self.eval_rows / len(self.data.train)})
        return total


# --------------------------------------------------------------------------- backbone


def _imagenet_weights(model: nn.Module):
    """The torchvision ImageNet weights entry whose architecture ``model`` has, if any."""
    tv = torchvision.models
    if isinstance(model, tv.ResNet) and model.conv1.in_channels == 3 and isinstance(model.layer1[0], tv.resnet.BasicBlock) \
            and [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2, 2, 2, 2]:
        return tv.ResNet18_Weights.IMAGENET1K_V1
    if isinstance(model, tv.VisionTransformer) and (model.patch_size, model.hidden_dim, len(model.encoder.layers),
                                                    model.image_size) == (16, 768, 12, 224):
        return tv.ViT_B_16_Weights.IMAGENET1K_V1
    return None


def imagenet_backbone(model: nn.Module) -> tuple[nn.Module, str] | None:
    """``model`` with the ImageNet weights of its architecture from the local torch cache (the
    classifier head re-initialised) and their name; None when there are none. Nothing is
    ever downloaded."""
    weights = _imagenet_weights(model)
    if weights is None or not os.path.exists(cached_weights_path(weights)):
        return None
    state = torch.load(cached_weights_path(weights), map_location="cpu", weights_only=True)
    head = head_path(model)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith(head + ".")}
    model.load_state_dict(usable, strict=False)
    model.get_submodule(head).reset_parameters()
    log.info("LoRA backbone: cached ImageNet weights %s", weights)
    return model, f"imagenet:{weights}"


@dataclass(frozen=True)
class BackboneTraining:
    """How the fallback backbone trains on the developer's share (plain cross-entropy)."""

    epochs: int
    lr: float
    optimizer: str
    batch_size: int = 128


def developer_backbone(architecture: nn.Module, rows: DeveloperRows, prepare, training: BackboneTraining,
                       device: torch.device, seed: int) -> tuple[nn.Module, str]:
    """A backbone of ``architecture`` trained from fresh weights on the developer's rows only.

    The auditor's rows (their labels included) never reach it. It is cached by the rows, the
    architecture, the training and the seed (under the dense cache, ``lora_backbone/``), so
    the four variants of one task and seed share one. Returns the model and its origin.
    """
    model = copy.deepcopy(architecture)
    key = config_hash({
        "rows": array_hash(rows.index, rows.y), "inputs": content_digest(rows.x), "architecture": str(model),
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}, "training": training, "seed": seed,
    })
    path = cache_root() / "lora_backbone" / f"{key}.pt"
    with file_lock(path.with_suffix(".lock")):  # two workers on one machine train it once
        return _load_or_train_backbone(model, path, key, rows, prepare, training, device, seed)


def _load_or_train_backbone(model: nn.Module, path, key: str, rows: DeveloperRows, prepare,
                            training: BackboneTraining, device: torch.device, seed: int) -> tuple[nn.Module, str]:
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("LoRA backbone: cached, trained on the developer's %d rows", len(rows))
            return model.to(device).eval(), f"developer_share:{key}"
        except Exception as exc:  # unreadable or of another shape: train again
            log.warning("LoRA backbone cache %s cannot be used (%s); retraining", path.name, type(exc).__name__)
    reinitialise(model, seed)
    cfg = TrainConfig(epochs=training.epochs, batch_size=training.batch_size, lr=training.lr,
                      optimizer=training.optimizer)
    Trainer(model, SideView(rows, prepare), cfg, device, seed, desc="developer backbone").fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, partial)
    os.replace(partial, path)  # workers sharing the cache never read a half-written file
    log.info("LoRA backbone: trained on the developer's %d rows", len(rows))
    return model.eval(), f"developer_share:{key}"


# --------------------------------------------------------------------------- the methods


class PrivacySplitLoRA(Method):
    """Shared by the four variants: the privacy split, the sides, the outcome."""

    family = "lora"
    conformance_params = {"epochs": 1, "auditor_epochs": 1, "rank": 2}

    @dataclass
    class Params:
        rank: int = 8                 # r of every adapter
        alpha: float = 16.0           # LoRA scale numerator: updates are (alpha / r) B A
        dropout: float = 0.1          # LoRA dropout on the adapter input
        target_modules: str = "auto"  # "auto" (see toolbox.lora.default_targets) or module names, comma-separated
        epochs: int = 5               # developer epochs (in total, over all rounds)
        auditor_epochs: int = 5       # epochs of the auditor's sensitive adapter
        lr: float = 5e-4              # AdamW, both sides
        batch_size: int = 64
        auditor_share: float = 0.5    # fraction of the training rows held (as x, s) by the auditor
        backbone: str = "auto"        # "auto": cached ImageNet weights if any, else "developer"; "developer"
        backbone_epochs: int = 10     # the "developer" backbone: epochs on the developer's share, from fresh weights
        backbone_lr: float = 0.01
        backbone_optimizer: str = "sgd"

    def validate(self) -> None:
        p = self.params
        if p.rank < 1 or p.alpha <= 0 or not 0 <= p.dropout < 1:
            raise ConfigError(f"{self.registered_name}: rank >= 1, alpha > 0 and dropout in [0, 1) are required")
        if p.epochs < 1 or p.auditor_epochs < 1 or p.lr <= 0 or p.batch_size < 1:
            raise ConfigError(f"{self.registered_name}: epochs, auditor_epochs, batch_size >= 1 and lr > 0 are required")
        if not 0 < p.auditor_share < 1:
            raise ConfigError(f"{self.registered_name}: auditor_share must lie in (0, 1)")
        if p.backbone not in ("auto", "developer"):
            raise ConfigError(f"{self.registered_name}: backbone must be 'auto' or 'developer' (a backbone trained "
                              "on the developer's share; the task's dense model has seen the auditor's labels)")
        if p.backbone_epochs < 1:
            raise ConfigError(f"{self.registered_name}: backbone_epochs must be >= 1")
        try:
            TrainConfig(epochs=p.backbone_epochs, lr=p.backbone_lr, optimizer=p.backbone_optimizer)
        except ConfigError as exc:
            raise ConfigError(f"{self.registered_name}: backbone training: {exc}") from None

    def space(self, trial) -> dict[str, Any]:
        return {**self.common_space(trial), **self.own_space(trial)}

    def common_space(self, trial) -> dict[str, Any]:
        return {"rank": trial.suggest_categorical("rank", [4, 8, 16]),
                "lr": trial.suggest_float("lr", 1e-4, 1e-3, log=True)}

    def own_space(self, trial) -> dict[str, Any]:
        return {}

    # -- building the sides -------------------------------------------------------------
    def spec(self, backbone: nn.Module) -> LoraSpec:
        """The adapter spec with the targets resolved to full paths on the backbone."""
        p = self.params
        targets = resolve_targets(backbone, p.target_modules)
        if head_path(backbone) in targets:
            raise ConfigError(f"{self.registered_name}: the classifier trains in full; it takes no adapter")
        return LoraSpec(p.rank, p.alpha, p.dropout, ",".join(targets))

    def train_config(self, epochs: int) -> TrainConfig:
        p = self.params
        return TrainConfig(epochs=epochs, batch_size=p.batch_size, lr=p.lr, optimizer="adamw")

    def developer_epochs(self) -> int:
        return self.params.epochs

    def backbone_training(self) -> BackboneTraining:
        p = self.params
        return BackboneTraining(p.backbone_epochs, p.backbone_lr, p.backbone_optimizer)

    def sides(self, ctx: MethodContext) -> tuple[Developer, Auditor, str]:
        p = self.params
        dev_rows, aud_rows = split_roles(ctx.task.train, p.auditor_share, ctx.seed)
        prepare = ctx.task.prepare
        self.spec(ctx.model)  # fails before any training
        chosen = imagenet_backbone(ctx.model) if p.backbone == "auto" else None
        if chosen is None:
            # the task's dense model trained on every training row, the auditor's labels too:
            # only its architecture is used
            chosen = developer_backbone(ctx.model, dev_rows, prepare, self.backbone_training(), ctx.device, ctx.seed)
        backbone, origin = chosen
        spec = self.spec(backbone)
        # the sides draw their adapters' initial values independently
        auditor = Auditor(copy.deepcopy(backbone), SideView(aud_rows, prepare), spec,
                          self.train_config(p.auditor_epochs), ctx.device, ctx.seed + 1)
        developer = Developer(backbone, SideView(dev_rows, prepare), spec,
                              self.train_config(self.developer_epochs()), ctx.device, ctx.seed)
        return developer, auditor, origin

    @abc.abstractmethod
    def exchange(self, developer: Developer, auditor: Auditor, channel: Channel) -> dict[str, Any]:
        """The variant's protocol; returns what is worth keeping in the run's info."""

    def apply(self, ctx: MethodContext) -> Outcome:
        developer, auditor, origin = self.sides(ctx)
        channel = Channel(developer.spec, developer.backbone)
        info = self.exchange(developer, auditor, channel)
        model = developer.adapted_model()
        cost = developer.trainer.cost.as_cost().prefixed("developer") + auditor.cost().prefixed("auditor")
        adapter = sum(p.numel() for p in developer.factors.values())
        info.update(backbone=origin, adapter_params=adapter, messages=len(channel.log),
                    bytes_exchanged=sum(map(len, channel.log)))
        return Outcome(model=model, cost=cost, info=info)


@register_method("lora_erm")
class ErmLoRA(PrivacySplitLoRA):
    """Erm: the developer fine-tunes the task adapter and head on (x, y); no auditor."""

    def exchange(self, developer, auditor, channel):
        developer.train()
        return {}


@register_method("lora_unlearn")
class UnlearnLoRA(PrivacySplitLoRA):
    """Unl: the backbone minus ``strength`` x the auditor's sensitive adapter, then Erm on top."""

    @dataclass
    class Params(PrivacySplitLoRA.Params):
        strength: float = 1.0  # lambda_u of W0 - lambda_u * (alpha / r) B_s A_s; docs/methods.md §2.9 suggests [0.5, 1]

    def validate(self) -> None:
        super().validate()
        if self.params.strength <= 0:
            raise ConfigError("lora_unlearn: strength must be positive")

    def own_space(self, trial):
        return {"strength": trial.suggest_float("strength", 0.25, 2.0)}

    def exchange(self, developer, auditor, channel):
        developer.unlearn(channel.deliver(auditor.sensitive_adapter()), self.params.strength)
        developer.train()
        return {}


@register_method("lora_orthogonal")
class OrthogonalLoRA(PrivacySplitLoRA):
    """Orth: CE(y) + ``orth_weight`` x sum_l ||A_y A_s^T||_F^2 against the auditor's sensitive adapter."""

    @dataclass
    class Params(PrivacySplitLoRA.Params):
        orth_weight: float = 1.0  # lambda_orth; docs/methods.md §2.9 suggests 0.1, 1 or 10

    def validate(self) -> None:
        super().validate()
        if self.params.orth_weight < 0:
            raise ConfigError("lora_orthogonal: orth_weight must be >= 0")

    def own_space(self, trial):
        return {"orth_weight": trial.suggest_float("orth_weight", 0.01, 100.0, log=True)}

    def exchange(self, developer, auditor, channel):
        sensitive = channel.deliver(auditor.sensitive_adapter())
        developer.keep_orthogonal_to(sensitive, self.params.orth_weight)
        developer.train()
        with torch.no_grad():
            overlap = subspace_overlap(developer.factors, sensitive.weights, normalized=True)
        return {"overlap_normalized": float(overlap)}


@register_method("lora_adversarial")
class AdversarialLoRA(PrivacySplitLoRA):
    """Adv: ``rounds`` x (developer epochs, then the auditor's update against its private adversary).

    Each round the developer trains ``epochs / rounds`` epochs and sends the task adapter.
    The auditor computes the adapted features of its rows (the classifier's input) once,
    fits its adversary on them (a logistic regression, see :func:`fit_probe`), trains the
    adapter for one epoch against it and sends the adapter back. The objective is
    ``uniform`` (cross-entropy of the adversary's output to the uniform distribution) or
    ``reversal`` (minus the adversary's cross-entropy, i.e. gradient reversal). That update
    has no other loss term and AdamW is blind to a loss's scale, so ``adv_weight``
    (lambda_adv) scales its learning rate instead: ``adv_weight * lr``; 0 switches it off.
    The model is the developer's after the last round.
    """

    conformance_params = {**PrivacySplitLoRA.conformance_params, "rounds": 1}

    @dataclass
    class Params(PrivacySplitLoRA.Params):
        rounds: int = 5               # R; epochs must be a multiple of it
        adv_weight: float = 1.0       # lambda_adv, as a factor on the auditor's update step; docs/methods.md §2.9 suggests 0.1 or 1
        adversary_c: float = 1.0      # inverse L2 strength of the adversary (a logistic regression), scikit-learn's default
        objective: str = "uniform"    # "uniform" or "reversal"

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p.rounds < 1 or p.epochs % p.rounds:
            raise ConfigError("lora_adversarial: rounds must be >= 1 and divide epochs")
        if p.adv_weight < 0 or p.adversary_c <= 0:
            raise ConfigError("lora_adversarial: adv_weight >= 0 and adversary_c > 0 are required")
        if p.objective not in ("uniform", "reversal"):
            raise ConfigError("lora_adversarial: objective must be 'uniform' or 'reversal'")

    def own_space(self, trial):
        return {"adv_weight": trial.suggest_float("adv_weight", 0.01, 10.0, log=True)}

    def developer_epochs(self) -> int:
        return self.params.epochs // self.params.rounds

    def exchange(self, developer, auditor, channel):
        p = self.params
        auditor.start_adversary(p.adv_weight, p.objective, p.adversary_c)
        for _ in range(p.rounds):
            update = auditor.adversarial_update(channel.deliver(developer.train()))
            developer.receive(channel.deliver(update))
        return {"adversary_accuracy": list(auditor.adversary_accuracy)}
