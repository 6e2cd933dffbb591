"""Fairness-aware LoRA under a privacy split: the split itself, what crosses, each mechanism."""
import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import MethodContext
from fairsqueeze.methods.lora_privacy import (
    AdapterMessage, Channel, WithheldColumn, fit_probe, imagenet_backbone, split_roles,
)
from fairsqueeze.methods.toolbox.lora import (
    LoraSpec, adapter_layout, attach, export_adapter, import_adapter, negate_into,
)
from fairsqueeze.models.base import cached_weights_path, create_model
from fairsqueeze.datasets.base import Split, TaskData
from fairsqueeze.core.vision import torchvision

CPU = torch.device("cpu")


def planted_task(n=600, seed=0):
    """y is read from feature 0, the group s from feature 1 (strongly), the rest is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    s = (rng.random(n) < 0.5).astype(np.int64)
    x[:, 1] = 3.0 * (2 * s - 1) + 0.3 * x[:, 1]
    split = Split(x, y, s, np.arange(n))
    return TaskData("planted", split, split, split, 2, (8,), "y", "s", {0: "a", 1: "b"})


def context(task, model, seed=0):
    return MethodContext(model, task.view(), CPU, seed, None, torch.Generator().manual_seed(seed))


def mlp(task, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", task.input_shape, task.num_classes, hidden=[16, 16])


@pytest.fixture(autouse=True)
def private_cache(isolated):
    """Trained fallback backbones are cached: each test gets its own cache folder."""
    return isolated


def method(name, **params):
    base = {"epochs": 4, "auditor_epochs": 4, "lr": 1e-2, "dropout": 0.0, "batch_size": 32, "backbone": "developer",
            "backbone_epochs": 3}
    return METHODS.get(name).from_config({**base, **params})


# --------------------------------------------------------------------------- the split


def test_each_side_holds_only_its_columns():
    task = planted_task()
    dev, aud = split_roles(task.train, 0.5, seed=0)
    with pytest.raises(WithheldColumn):
        dev.s
    with pytest.raises(WithheldColumn):
        aud.y
    assert len(dev) + len(aud) == len(task.train)
    assert not set(dev.index) & set(aud.index)

    developer, auditor, _ = method("lora_erm").sides(context(task, mlp(task)))
    with pytest.raises(WithheldColumn):
        developer.data.train.s
    seen = []
    loss = developer.loss
    developer.loss = lambda model, batch: seen.append(batch.s) or loss(model, batch)
    developer._start()
    developer.trainer.loss_fn = developer.loss
    developer.trainer.fit()
    assert seen and all(s is None for s in seen)  # the trainer never handed the developer a group


def test_only_adapter_factors_cross_between_the_sides():
    task = planted_task()
    for name in ("lora_unlearn", "lora_orthogonal", "lora_adversarial"):
        m = method(name, **({"rounds": 2} if name == "lora_adversarial" else {}))
        developer, auditor, _ = m.sides(context(task, mlp(task)))
        channel = Channel(developer.spec, developer.backbone)
        m.exchange(developer, auditor, channel)
        assert channel.log
        factor_shapes = {k: tuple(p.shape) for k, p in developer.factors.items()}
        for data in channel.log:
            message = AdapterMessage.from_bytes(data)
            # by hand: rank 8 on fc1 (8 -> 16) and fc2 (16 -> 16); the head fc3 never
            assert {k: tuple(v.shape) for k, v in message.weights.items()} == {
                "base_model.model.fc1.lora_A.weight": (8, 8), "base_model.model.fc1.lora_B.weight": (16, 8),
                "base_model.model.fc2.lora_A.weight": (8, 16), "base_model.model.fc2.lora_B.weight": (16, 8),
            } == factor_shapes
            assert message.role in ("task", "sensitive") and message.spec == developer.spec


def test_every_smuggling_route_is_refused():
    """What the auditor could try to slip into a message: the group vector or the labels as a
    tensor named like a factor, a factor of another shape, an extra factor for a module that
    is not a target, free text in the role, data in the spec's fields or in extra metadata."""
    import json

    from safetensors.torch import save

    task = planted_task()
    backbone = mlp(task)
    spec = LoraSpec(rank=2, alpha=4.0, dropout=0.0, target_modules="fc1,fc2")
    channel = Channel(spec, backbone)
    honest = random_adapter(backbone, spec)
    assert channel.deliver(AdapterMessage("sensitive", spec, honest.weights)).weights.keys() == honest.weights.keys()
    assert len(channel.log) == 1
    s = torch.as_tensor(task.train.s, dtype=torch.float32)
    a_key = "base_model.model.fc1.lora_A.weight"

    def weights(**changes):
        return {**honest.weights, **changes}

    routes = {
        "s as a factor": AdapterMessage("sensitive", spec, weights(**{a_key: s.reshape(1, -1)})),
        "a factor of a larger rank": AdapterMessage("sensitive", spec, weights(**{a_key: torch.randn(3, 8)})),
        "an integer factor": AdapterMessage("sensitive", spec, weights(**{a_key: torch.ones(2, 8, dtype=torch.int64)})),
        "a factor on the head": AdapterMessage("sensitive", spec, weights(**{
            "base_model.model.fc3.lora_A.weight": torch.zeros(2, 16),
            "base_model.model.fc3.lora_B.weight": torch.zeros(2, 2)})),
        "a missing factor": AdapterMessage("sensitive", spec, {k: v for k, v in honest.weights.items() if k != a_key}),
        "y in target_modules": AdapterMessage("sensitive", LoraSpec(2, 4.0, 0.0, "fc1,fc2," + "".join(
            map(str, task.train.y[:50]))), honest.weights),
        "another rank in the spec": AdapterMessage("sensitive", LoraSpec(3, 4.0, 0.0, "fc1,fc2"), honest.weights),
    }
    for route, message in routes.items():
        with pytest.raises(ValueError):
            channel.deliver(message)
            pytest.fail(f"{route} crossed")
    assert len(channel.log) == 1  # nothing refused was logged as disclosed
    with pytest.raises(ValueError, match="role"):
        AdapterMessage("s=" + ",".join(map(str, task.train.s[:20])), spec, honest.weights)
    with pytest.raises(ValueError, match="LoRA factors only"):
        AdapterMessage("sensitive", spec, weights(**{"base_model.model.fc3.weight": torch.zeros(2, 16)}))
    tensors = {k: v.contiguous() for k, v in honest.weights.items()}
    extra_meta = save(tensors, metadata={"role": "sensitive", "spec": json.dumps(spec.__dict__), "s": "0,1,1,0"})
    with pytest.raises(ValueError, match="metadata"):
        AdapterMessage.from_bytes(extra_meta)
    text_rank = save(tensors, metadata={"role": "sensitive", "spec": json.dumps({**spec.__dict__, "rank": "2 s=0110"})})
    with pytest.raises(ValueError, match="fields"):
        AdapterMessage.from_bytes(text_rank)
    with pytest.raises(TypeError):
        channel.deliver({"s": torch.zeros(3)})


@pytest.mark.parametrize("build", ["mlp", "resnet", "vit"])
def test_adapter_layout_is_what_peft_exports(build):
    if build == "mlp":
        model, targets = mlp(planted_task()), "auto"
    elif build == "resnet":
        model, targets = create_model("resnet18", (3, 32, 32), 2), "auto"
    else:
        model, targets = tiny_vit(), "auto"
    spec = LoraSpec(rank=3, alpha=6.0, dropout=0.0, target_modules=targets)
    exported = export_adapter(attach(copy.deepcopy(model), spec, "task"), "task", spec, role="task")
    assert adapter_layout(model, spec) == {k: tuple(v.shape) for k, v in exported.weights.items()}


def test_message_round_trips_through_bytes():
    task = planted_task()
    spec = LoraSpec(rank=2, alpha=4.0, dropout=0.0, target_modules="fc1,fc2")
    model = attach(mlp(task), spec, "task")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    sent = export_adapter(model, "task", spec, role="task")
    got = AdapterMessage.from_bytes(sent.to_bytes())
    assert got.role == "task" and got.spec == spec
    assert set(got.weights) == set(sent.weights)
    assert all(torch.equal(got.weights[k], sent.weights[k]) for k in sent.weights)
    import_adapter(model, "task", got)  # fits its own model
    other = attach(mlp(task), LoraSpec(rank=3, alpha=4.0, dropout=0.0, target_modules="fc1,fc2"), "task")
    with pytest.raises(ValueError):
        import_adapter(other, "task", got)  # another rank does not


# --------------------------------------------------------------------------- the mechanisms


def random_adapter(model, spec, seed=1):
    torch.manual_seed(seed)
    adapted = attach(copy.deepcopy(model), spec, "sensitive")
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.normal_()
    return export_adapter(adapted, "sensitive", spec, role="sensitive")


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_unlearning_moves_the_backbone_by_exactly_the_negated_adapter(strength):
    task = planted_task()
    backbone = mlp(task)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    spec = LoraSpec(rank=3, alpha=6.0, dropout=0.0, target_modules="fc1,fc2")
    message = random_adapter(backbone, spec)
    after = negate_into(backbone, message, strength).state_dict()
    assert set(after) == set(before)  # merged: no adapter left behind
    for key in before:
        layer = key.rsplit(".", 1)[0]
        if key.endswith("weight") and layer in ("fc1", "fc2"):
            a = message.weights[f"base_model.model.{layer}.lora_A.weight"]
            b = message.weights[f"base_model.model.{layer}.lora_B.weight"]
            expected = before[key] - strength * (6.0 / 3) * (b @ a)  # by hand: W0 - lambda (alpha/r) B A
            torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-5)
            if strength:
                assert not torch.allclose(after[key], before[key])
        else:
            assert torch.equal(after[key], before[key])


def test_orthogonality_loss_drives_the_overlap_toward_zero():
    task = planted_task()

    def overlap(weight):
        m = method("lora_orthogonal", orth_weight=weight, rank=4, epochs=6)
        developer, auditor, _ = m.sides(context(task, mlp(task)))
        info = m.exchange(developer, auditor, Channel(developer.spec, developer.backbone))
        return info["overlap_normalized"]

    erm, orth = overlap(0.0), overlap(10.0)
    assert erm > 0.02  # two independent rank-4 subspaces of a 16/8-dim input overlap
    assert orth < 0.1 * erm


@pytest.mark.parametrize("groups", [2, 3])
def test_the_adversary_layer_predicts_as_the_logistic_regression_it_comes_from(groups):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    s = rng.integers(0, groups, 300)
    features = (rng.normal(size=(300, 5)) + 0.8 * s[:, None]).astype(np.float32)
    layer, accuracy = fit_probe(features, s, groups + 1, c=1.0)  # the last group is absent
    oracle = LogisticRegression(C=1.0, max_iter=1000).fit(features, s)
    with torch.no_grad():
        probs = layer(torch.as_tensor(features)).softmax(1).numpy()
    np.testing.assert_allclose(probs[:, :groups], oracle.predict_proba(features), atol=1e-5)
    assert probs[:, groups].max() < 1e-10 and accuracy == oracle.score(features, s) > 1 / groups


def test_adversary_accuracy_falls_over_the_rounds_only_when_the_adversary_pushes():
    task = planted_task()

    def accuracies(weight):
        m = method("lora_adversarial", adv_weight=weight, rounds=5, epochs=5, rank=4, lr=3e-2)
        developer, auditor, _ = m.sides(context(task, mlp(task)))
        return m.exchange(developer, auditor, Channel(developer.spec, developer.backbone))["adversary_accuracy"]

    pushed, off = accuracies(3.0), accuracies(0.0)
    assert pushed[0] == off[0] > 0.9  # s is plain in the features at first
    assert pushed[-1] < pushed[0] - 0.3  # chance is 0.5
    # alternating games oscillate: compare the rounds after the first on average
    assert np.mean(pushed[1:]) < np.mean(off[1:]) - 0.1 and off[-1] > 0.75


# --------------------------------------------------------------------------- footprint, backbone, params


def test_returned_model_is_the_backbone_plus_the_adapters():
    task = planted_task()
    model = mlp(task)
    dense = sum(p.numel() for p in model.parameters())
    outcome = method("lora_erm", rank=3, epochs=1).apply(context(task, model))
    adapters = 3 * (8 + 16) + 3 * (16 + 16)  # r (d_in + d_out) for fc1 and fc2; the head fc3 trains in full
    assert sum(p.numel() for p in outcome.model.parameters()) == dense + adapters
    assert outcome.info["adapter_params"] == adapters


def tiny_vit():
    torch.manual_seed(0)
    model = create_model("vit_small", (3, 16, 16), 2, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval()


def _manual_vit(model, message, scale):
    """The ViT with every adapted weight set by hand to W0 + scale·B·A (fused q/k/v in-projection
    and out-projection of each attention block), adapters nowhere."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for key, a in message.weights.items():
            if ".lora_A." not in key:
                continue
            b = message.weights[key.replace(".lora_A.", ".lora_B.")]
            path = key.removeprefix("base_model.model.").split(".lora_A.")[0].replace(".base_layer", "")
            # the attention block's own adapter is its fused in-projection's
            target = path + (".weight" if path.endswith("out_proj") else ".in_proj_weight")
            module_path, _, name = target.rpartition(".")
            getattr(merged.get_submodule(module_path), name).add_(scale * (b @ a))
    return merged


def test_every_vit_attention_layer_moves_by_exactly_alpha_over_r_b_a():
    """PEFT adapts nn.MultiheadAttention's fused in-projection and its out-projection; both
    must move by (alpha/r)·B·A once, in the forward pass and when merged (PEFT 0.21.2 adds
    the out-projection's delta twice unless it is worked around)."""
    model = tiny_vit()
    spec = LoraSpec(rank=2, alpha=6.0, dropout=0.0, target_modules="auto")
    message = random_adapter(model, spec)
    assert sum(".out_proj.lora_A." in k for k in message.weights) == 2  # both blocks' out-projections
    assert sum(".self_attention.lora_A." in k for k in message.weights) == 2  # and their in-projections
    expected = _manual_vit(model, message, 3.0)
    adapted = attach(copy.deepcopy(model), spec, "task")
    import_adapter(adapted, "task", message)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), expected(x), rtol=1e-4, atol=1e-5)  # the forward path
    merged = adapted.merge_and_unload().state_dict()
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-5)
    # unlearning subtracts strength·(alpha/r)·B·A from every adapted layer, out-projection included
    negated = negate_into(copy.deepcopy(model), message, 0.5).state_dict()
    for key, value in _manual_vit(model, message, -0.5 * 3.0).state_dict().items():
        torch.testing.assert_close(negated[key], value, rtol=0, atol=1e-5)


def test_cached_imagenet_weights_are_the_backbone_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = create_model("resnet18", (3, 32, 32), 2)
    assert imagenet_backbone(copy.deepcopy(model)) is None

    torch.manual_seed(5)
    imagenet = torchvision.models.resnet18()
    path = cached_weights_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet.state_dict(), path)
    backbone, origin = imagenet_backbone(copy.deepcopy(model))
    assert origin.startswith("imagenet")
    assert torch.equal(backbone.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert backbone.fc.out_features == 2


def test_the_fallback_backbone_learns_from_the_developer_share_only(monkeypatch, tmp_path, caplog):
    """Without ImageNet weights the backbone is the dense architecture trained from fresh
    weights on the developer's rows alone: recomputed here with the plain trainer, it is the
    same model; flipping the auditor's labels changes nothing; the run's info names it."""
    from fairsqueeze.methods.lora_privacy import SideView
    from fairsqueeze.methods.toolbox.reinit import reinitialise
    from fairsqueeze.engine.training import Trainer
    from fairsqueeze.spec.train import TrainConfig

    task = planted_task()
    dense = mlp(task)
    developer, _, origin = method("lora_erm").sides(context(task, copy.deepcopy(dense)))
    assert origin.startswith("developer_share:")
    dev_rows, aud_rows = split_roles(task.train, 0.5, seed=0)
    by_hand = copy.deepcopy(dense)
    reinitialise(by_hand, 0)
    Trainer(by_hand, SideView(dev_rows, task.view().prepare), TrainConfig(epochs=3, batch_size=128, lr=0.01),
            CPU, 0).fit()
    trained = developer.backbone.state_dict()
    for key, value in by_hand.state_dict().items():
        assert torch.equal(trained[key], value), key
        assert not torch.equal(trained[key], dense.state_dict()[key])  # not the task's dense model

    flipped_y = task.train.y.copy()
    flipped_y[aud_rows.index] = 1 - flipped_y[aud_rows.index]  # index = row number in this task
    train = Split(task.train.x, flipped_y, task.train.s, task.train.index)
    flipped = TaskData("planted", train, task.val, task.test, 2, (8,), "y", "s", {0: "a", 1: "b"})
    monkeypatch.setenv("FAIRSQUEEZE_CACHE", str(tmp_path / "other-cache"))  # trained again, not loaded
    other, _, _ = method("lora_erm").sides(context(flipped, copy.deepcopy(dense)))
    assert all(torch.equal(other.backbone.state_dict()[k], v) for k, v in trained.items())

    with caplog.at_level(logging.INFO, logger="fairsqueeze.methods.lora_privacy"):
        outcome = method("lora_erm", epochs=1).apply(context(flipped, copy.deepcopy(dense)))
    assert outcome.info["backbone"] == origin and "cached" in caplog.text  # one backbone per rows and seed


def test_parameters_are_validated_and_searchable():
    import optuna

    with pytest.raises(ConfigError):
        METHODS.get("lora_adversarial").from_config({"epochs": 5, "rounds": 2})
    with pytest.raises(ConfigError):
        METHODS.get("lora_erm").from_config({"auditor_share": 1.0})
    with pytest.raises(ConfigError):
        METHODS.get("lora_unlearn").from_config({"strength": 0})
    task = planted_task()
    with pytest.raises(ConfigError):
        method("lora_erm", target_modules="fc3").sides(context(task, mlp(task)))
    for name in ("lora_erm", "lora_unlearn", "lora_orthogonal", "lora_adversarial"):
        trial = optuna.trial.FixedTrial({"rank": 4, "lr": 3e-4, "strength": 0.5, "orth_weight": 1.0, "adv_weight": 0.1})
        params = METHODS.get(name).from_config({}).space(trial)
        assert params["rank"] == 4 and params["lr"] == 3e-4
