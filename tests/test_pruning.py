"""The pruning family: selection direction and indexing, schedules, scores, methods, footprint."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from test_lowrank import make_ctx, make_task
from test_network_curvature import hessian_diag
from fairsqueeze.core.errors import ConfigError
from fairsqueeze.measure.footprint import compression_ratio, csr_bytes, footprint
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods.toolbox.pruning import filter_layers, prune_filters, prune_weights, select_smallest
from fairsqueeze.methods.toolbox.scores import GroupSaliency, HeadSaliency, Magnitude, Scores
from fairsqueeze.models.base import create_model

DTYPE = torch.float64


def mlp(seed=0, d_in=4, hidden=3, classes=2) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes)).to(DTYPE)


class Planted:
    """A score that returns fixed values and records what the model looked like when called."""

    def __init__(self, values: dict[str, torch.Tensor]):
        self.values, self.seen = values, []

    def __call__(self, model, names):
        self.seen.append({n: model.get_parameter(n).detach().clone() for n in names})
        return Scores({n: self.values[n] for n in names}, passes={"forward": 1.0})


# --------------------------------------------------------------------------- selection


def test_the_smallest_scores_are_removed_per_layer():
    scores = {"a": torch.tensor([5.0, -1.0, 3.0, 0.5]), "b": torch.tensor([2.0, 1.0, 9.0])}
    none = {n: torch.zeros(len(s), dtype=torch.bool) for n, s in scores.items()}
    chosen = select_smallest(scores, none, {"a": 2, "b": 1})
    assert chosen["a"].tolist() == [False, True, False, True]  # -1 and 0.5: the smallest, not the largest
    assert chosen["b"].tolist() == [False, True, False]
    # already removed units are skipped, not re-ranked
    dead = {"a": torch.tensor([False, True, False, False]), "b": torch.zeros(3, dtype=torch.bool)}
    assert select_smallest(scores, dead, {"a": 1, "b": 0})["a"].tolist() == [False, False, False, True]
    # ties at the cut are broken by position
    tied = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0])}
    chosen = select_smallest(tied, {"a": torch.zeros(5, dtype=torch.bool)}, {"a": 3})
    assert chosen["a"].tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="cannot remove"):
        select_smallest(scores, dead, {"a": 4, "b": 0})


def _misaligned_reference(model, scores, k):
    """The public reimplementations' global step: biases go into the flat vector (with their
    own scores), but the write-back walks the weights only, so indices shift."""
    flat = torch.cat([scores[n].flatten() if n in scores else torch.full((p.numel(),), 1e9, dtype=DTYPE)
                      for n, p in model.named_parameters()])
    remove = torch.zeros(len(flat), dtype=torch.bool)
    remove[torch.argsort(flat)[:k]] = True
    masks, offset = {}, 0
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            continue  # skipped on write-back, but its entries were counted in the ranking
        masks[n] = remove[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    return masks


def test_global_ranking_cannot_misalign_when_biases_are_skipped():
    net = mlp()
    names = ["0.weight", "2.weight"]
    # planted: the 5 smallest scores sit in the second layer and at the end of the first
    values = {"0.weight": torch.arange(12, dtype=DTYPE).view(3, 4) + 10, "2.weight": torch.arange(6, dtype=DTYPE).view(2, 3)}
    values["0.weight"][2, 3] = -1.0
    expected = {"0.weight": values["0.weight"] < 0, "2.weight": values["2.weight"] < 4}
    biases = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("bias")}
    result = prune_weights(net, Planted(values), names, ratio=5 / 18, scope="global")
    for n in names:
        assert torch.equal(result.removed[n].view(expected[n].shape), expected[n]), n
        assert torch.equal(net.get_parameter(n) == 0, expected[n]), n
    for n, b in biases.items():
        assert torch.equal(net.get_parameter(n), b)
    # the misaligned reference, on the same planted scores, fails this very check
    wrong = _misaligned_reference(mlp(), values, 5)
    assert any(not torch.equal(wrong[n], expected[n]) for n in names)


def test_per_layer_ratio_and_one_shot_equals_steps_for_a_static_score():
    net = create_model("vgg11_narrow", (3, 32, 32), 4).double()
    names = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    one = copy.deepcopy(net)
    prune_weights(one, Magnitude(), names, ratio=0.35)
    steps = copy.deepcopy(net)
    result = prune_weights(steps, Magnitude(), names, ratio=0.35, steps=4)
    for n in names:
        p = one.get_parameter(n)
        assert int((p == 0).sum()) == int(0.35 * p.numel() + 1e-9), n  # ⌊0.35·n⌋ per layer
        assert torch.equal(p, steps.get_parameter(n))  # magnitudes of survivors do not change
    # zeroed weights score 0 (the smallest) at later steps: had they not been excluded, later
    # steps would pick them again and fall short of the target
    assert [s["removed"] for s in result.steps][-1] == sum(int((one.get_parameter(n) == 0).sum()) for n in names)
    assert len(result.steps) == 4 and result.steps[0]["removed"] < result.steps[1]["removed"]


def test_iterative_steps_rescore_the_pruned_model():
    net = mlp()
    names = ["0.weight", "2.weight"]
    planted = Planted({"0.weight": torch.arange(12, dtype=DTYPE).view(3, 4), "2.weight": torch.arange(6, dtype=DTYPE).view(2, 3)})
    result = prune_weights(net, planted, names, ratio=0.5, steps=2)
    assert len(planted.seen) == 2
    first_step = planted.seen[1]["0.weight"] == 0
    assert first_step.flatten()[:3].all() and int(first_step.sum()) == 3  # ⌊0.25·12⌋ removed by step 1
    assert int(result.removed["0.weight"].sum()) == 6 and result.passes == {"forward": 2.0}


def test_filters_are_ranked_by_their_summed_score_and_removed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(2, 1, 6, 6)
    values = {"0.weight": torch.zeros(4, 1, 3, 3)}
    values["0.weight"][:, 0, 0, 0] = torch.tensor([3.0, -2.0, 1.0, 0.0])  # sums: filters 1 and 3 smallest
    values["0.weight"][2, 0, 1, 1] = 5.0  # filter 2 sums to 6
    kept_w = net[0].weight.detach()[[0, 2]].clone()
    result = prune_filters(net, Planted(values), ["0"], ratio=0.5, example_input=x)
    assert result.removed["0"].tolist() == [False, True, False, True]
    assert net[0].out_channels == 2 and net[3].in_features == 2 * 16
    assert torch.equal(net[0].weight, kept_w)


# --------------------------------------------------------------------------- FairPrune's score


def test_group_saliency_matches_autograd_hessians():
    net = mlp(d_in=4, hidden=5, classes=3)
    g = torch.Generator().manual_seed(0)
    data = {c: (torch.randn(10, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (10,), generator=g)) for c in (0, 1)}
    names = ["0.weight", "2.weight"]
    scores = GroupSaliency(data, beta=3 / 7, batch_size=5)(net, names)
    for n in names:
        theta = net.get_parameter(n).detach()
        h0, h1 = (hessian_diag(net, n, *data[c]) for c in (0, 1))
        torch.testing.assert_close(scores.values[n], 0.5 * theta**2 * (h0 - 3 / 7 * h1))
    assert scores.info["estimator"] == "ggn_exact" and scores.passes["backward"] == 3.0


def test_head_saliency_is_the_group_saliency_of_the_head_on_its_features():
    """FairLRF's score object: the curvature of a head (here the last two layers) on the
    features it receives, against autograd Hessians of that head's loss."""
    net = mlp(d_in=4, hidden=5, classes=3)
    head = net[1:]
    g = torch.Generator().manual_seed(0)
    features = {c: (torch.randn(10, 5, generator=g, dtype=DTYPE), torch.randint(0, 3, (10,), generator=g))
                for c in (0, 1)}
    scores = HeadSaliency(features, beta=5 / 9, batch_size=5)(head, ["2.weight"])
    theta = head.get_parameter("2.weight").detach()
    h0, h1 = (hessian_diag(head, "2.weight", *features[c]) for c in (0, 1))
    torch.testing.assert_close(scores.values["2.weight"], 0.5 * theta**2 * (h0 - 5 / 9 * h1))
    assert scores.passes["backward"] > 0


def _two_feature_task():
    """Group 0 only ever sees feature 0, group 1 only feature 1; feature-0 weights are small."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).to(DTYPE)
    with torch.no_grad():
        net[0].weight[:, 0] = torch.tensor([0.5, -0.6, 0.7, -0.8])
        net[0].weight[:, 1] = torch.tensor([1.5, -1.6, 1.7, -1.8])
        net[0].bias.fill_(0.1)
    g = torch.Generator().manual_seed(1)
    data = {}
    for c in (0, 1):
        x = torch.zeros(40, 2, dtype=DTYPE)
        x[:, c] = torch.randn(40, generator=g, dtype=DTYPE)
        data[c] = (x, torch.randint(0, 2, (40,), generator=g))
    return net, data


def test_fairprune_keeps_what_the_unprivileged_group_needs():
    net, data = _two_feature_task()
    fair = copy.deepcopy(net)
    prune_weights(fair, GroupSaliency(data, beta=1 / 3), ["0.weight"], ratio=0.5)
    assert (fair[0].weight[:, 1] == 0).all() and (fair[0].weight[:, 0] != 0).all()
    # with the roles swapped, the other group's feature is kept
    swapped = copy.deepcopy(net)
    prune_weights(swapped, GroupSaliency({0: data[1], 1: data[0]}, beta=1 / 3), ["0.weight"], ratio=0.5)
    assert (swapped[0].weight[:, 0] == 0).all() and (swapped[0].weight[:, 1] != 0).all()
    # without the group-aware score (magnitude), the unprivileged group's small weights go
    plain = copy.deepcopy(net)
    prune_weights(plain, Magnitude(), ["0.weight"], ratio=0.5)
    assert (plain[0].weight[:, 0] == 0).all()


# --------------------------------------------------------------------------- planted direction


def planted_groups_task(n=48, seed=0):
    """Group 0 sees feature 0 only, group 1 feature 1 only (the other is exactly zero), so a
    first-layer weight on feature c has curvature on group c's rows and none on the other's."""
    from fairsqueeze.datasets.base import Split, TaskData

    rng = np.random.default_rng(seed)

    def split(offset):
        s = np.repeat([0, 1], n)
        x = np.zeros((2 * n, 2), dtype=np.float32)
        x[np.arange(2 * n), s] = rng.normal(size=2 * n)
        y = rng.integers(0, 2, 2 * n)
        return Split(x, y, s, np.arange(offset, offset + 2 * n))

    return TaskData("planted-groups", split(0), split(10_000), split(20_000), 2, (2,), "y", "s", {0: "a", 1: "b"})


def planted_groups_mlp(per_neuron: bool) -> nn.Module:
    """fc1 (4 x 2): ``per_neuron`` makes neurons 0-1 read feature 0 only and 2-3 feature 1
    only; otherwise every neuron reads both. Feature 1's weights are the larger ones, so
    magnitude pruning would drop feature 0's. No weight is a power of two (each has a
    rounding error)."""
    torch.manual_seed(0)
    model = create_model("mlp", (2,), 2, hidden=[4]).eval()
    with torch.no_grad():
        if per_neuron:
            model.fc1.weight.copy_(torch.tensor([[0.55, 0.0], [-0.6, 0.0], [0.0, 1.3], [0.0, -1.45]]))
        else:
            model.fc1.weight.copy_(torch.tensor([[0.55, 1.3], [-0.6, -1.45], [0.7, 1.7], [-0.8, -1.8]]))
        model.fc1.bias.fill_(0.1)
    return model


def _unprivileged_ctx(model, data, unprivileged):
    # the dense model is less accurate on the unprivileged group on validation
    return make_ctx(copy.deepcopy(model), data, val_accuracy={unprivileged: 0.6, 1 - unprivileged: 0.9})


@pytest.mark.parametrize("unprivileged", [0, 1])
def test_fairprune_removes_the_weights_only_the_privileged_group_uses(unprivileged):
    """½θ²(h⁰ − β·h¹) is negative where only the privileged group has curvature: those go
    first, whichever group is unprivileged; the unprivileged group's feature stays whole."""
    data, model = planted_groups_task(), planted_groups_mlp(per_neuron=False)
    out = METHODS.get("fairprune").from_config({"ratio": 0.5}).apply(_unprivileged_ctx(model, data, unprivileged))
    w = out.model.fc1.weight
    assert out.info["unprivileged_group"] == unprivileged
    assert (w[:, 1 - unprivileged] == 0).all() and (w[:, unprivileged] != 0).all()


@pytest.mark.parametrize("unprivileged", [0, 1])
def test_structured_fairprune_removes_the_neurons_only_the_privileged_group_uses(unprivileged):
    data, model = planted_groups_task(), planted_groups_mlp(per_neuron=True)
    out = METHODS.get("fairprune_structured").from_config({"ratio": 0.5}).apply(
        _unprivileged_ctx(model, data, unprivileged))
    kept = out.model.fc1.weight.detach()
    assert kept.shape == (2, 2)
    # the surviving neurons are the ones that read the unprivileged group's feature
    assert (kept[:, 1 - unprivileged] == 0).all() and (kept[:, unprivileged] != 0).all()


# --------------------------------------------------------------------------- registered methods


def _task_and_model(shift=1.5):
    data = make_task((6,), 3, 40, shift=shift)
    torch.manual_seed(0)
    return data, create_model("mlp", (6,), 3, hidden=[8, 8]).eval()


def test_fairprune_method_records_its_choices_and_prunes_each_layer():
    data, model = _task_and_model()
    dense = copy.deepcopy(model.state_dict())
    ctx = make_ctx(model, data, val_accuracy={0: 0.9, 1: 0.6})
    out = METHODS.get("fairprune").from_config({"ratio": 0.5, "beta": "3/7"}).apply(ctx)
    assert out.info["unprivileged_group"] == 1 and out.info["estimator"] == "ggn_exact"
    assert out.info["estimator_kind"].startswith("exact") and out.info["beta"] == pytest.approx(3 / 7)
    assert out.cost.passes["backward"] == 3.0 and out.sparse_storage == ()
    for name, value in out.model.state_dict().items():
        if name.endswith("weight"):
            assert int((value == 0).sum()) == value.numel() // 2, name
        else:
            assert torch.equal(value, dense[name]), name  # biases untouched
    mc = METHODS.get("fairprune").from_config({"ratio": 0.5, "estimator": "ggn_mc", "unprivileged_group": 0})
    info = mc.apply(make_ctx(copy.deepcopy(model), data)).info
    assert info["estimator"] == "ggn_mc" and info["estimator_kind"].startswith("approximation")
    assert info["unprivileged_group"] == 0


def test_fairprune_removes_the_smallest_autograd_saliencies_and_is_deterministic():
    """The oracle: ½θ²(h⁰ − β·h¹) with h^c the exact diagonal of the loss Hessian on group c's
    scoring rows by autograd (equal to the GGN diagonal a.e. for a ReLU MLP), unprivileged
    group 1. Every removed weight scores no higher than every kept one, in every layer."""
    data, model = _task_and_model()
    ctx = make_ctx(copy.deepcopy(model), data)
    out = METHODS.get("fairprune").from_config({"ratio": 0.35, "beta": "1/3", "unprivileged_group": 1}).apply(ctx)
    sets = make_ctx(model, data).scoring_sets()
    x = {g: torch.as_tensor(sets[g].x) for g in (0, 1)}
    y = {g: torch.as_tensor(sets[g].y) for g in (0, 1)}
    pruned = dict(out.model.named_parameters())
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        theta = model.get_parameter(name).detach()
        h_unprivileged, h_privileged = hessian_diag(model, name, x[1], y[1]), hessian_diag(model, name, x[0], y[0])
        oracle = (0.5 * theta**2 * (h_unprivileged - h_privileged / 3)).flatten()
        removed = (pruned[name] == 0).flatten()
        assert int(removed.sum()) == int(0.35 * theta.numel())
        scale = float(oracle.abs().max())
        assert float(oracle[removed].max()) <= float(oracle[~removed].min()) + 1e-5 * scale, name
    again = METHODS.get("fairprune").from_config({"ratio": 0.35, "beta": "1/3", "unprivileged_group": 1}).apply(
        make_ctx(copy.deepcopy(model), data))
    assert all(torch.equal(a, b) for a, b in zip(out.model.parameters(), again.model.parameters()))


def test_structured_variants_shrink_the_model():
    data, model = _task_and_model()
    for name in ("magnitude_prune_structured", "fairprune_structured"):
        out = METHODS.get(name).from_config({"ratio": 0.5}).apply(make_ctx(copy.deepcopy(model), data))
        assert out.model.fc1.out_features == 4 and out.model.fc2.out_features == 4
        assert out.model.fc3.out_features == 3  # the logits stay
        assert out.model(torch.randn(2, 6)).shape == (2, 3)
        assert compression_ratio(footprint(model), footprint(out.model)) > 1.5


@pytest.mark.parametrize("name", ["magnitude_prune", "fairprune", "fairprune_structured"])
def test_parameter_checks(name):
    cls = METHODS.get(name)
    for bad in ({"ratio": 1.0}, {"ratio": -0.1}, {"steps": 0}, {"scope": "model"}):
        with pytest.raises(ConfigError):
            cls.from_config(bad)
    if name.startswith("fairprune"):
        for bad in ({"beta": "x/2"}, {"estimator": "nope"}, {"scoring_size": 0}, {"batch_size": 0}):
            with pytest.raises(ConfigError):
                cls.from_config(bad)
    if name.endswith("structured"):
        with pytest.raises(ConfigError, match="per layer"):
            cls.from_config({"scope": "global"})


@pytest.mark.parametrize("name", ["fairprune", "fairprune_structured", "fairquantize", "fairlrf"])
def test_every_group_curvature_method_validates_beta_the_same_way(name):
    """β weighs the privileged group's curvature: a negative β rewards removing what that
    group needs, so all three families refuse it with one message; fractions are parsed."""
    cls = METHODS.get(name)
    for negative in (-1, "-1/3", -1e-9):
        with pytest.raises(ConfigError, match=f"^{name}: beta must be >= 0"):
            cls.from_config({"beta": negative})
    for bad in ("nan", "x/2", "1/0"):
        with pytest.raises(ConfigError, match="beta"):
            cls.from_config({"beta": bad})
    assert cls.from_config({"beta": "5/9"}).params.beta == pytest.approx(5 / 9)
    assert cls.from_config({"beta": 0}).params.beta == 0.0


def test_a_ratio_that_removes_nothing_says_so():
    data, model = _task_and_model()
    out = METHODS.get("magnitude_prune").from_config({"ratio": 0.01}).apply(make_ctx(copy.deepcopy(model), data))
    assert "no_op" in out.info and out.info["removed_fraction"] == 0.0  # layers of <= 64 weights: floor(0.64) = 0
    out = METHODS.get("magnitude_prune").from_config({"ratio": 0.2}).apply(make_ctx(copy.deepcopy(model), data))
    assert "no_op" not in out.info


def test_paper_defaults():
    p = METHODS.get("fairprune").Params()
    assert (p.ratio, p.beta, p.scope, p.steps, p.estimator) == (0.35, "1/3", "layer", 1, "ggn_exact")


# --------------------------------------------------------------------------- footprint


def test_unstructured_pruning_keeps_the_papers_ratio_but_reports_real_sparsity():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 10))
    pruned = copy.deepcopy(dense)
    prune_weights(pruned, Magnitude(), ["0.weight", "1.weight"], ratio=0.8)
    fp_dense, fp = footprint(dense), footprint(pruned)
    assert compression_ratio(fp_dense, fp) == 1.0
    assert fp["sparsity"] == pytest.approx((4000 + 400) / (5000 + 50 + 500 + 10))
    # CSR: per matrix nnz x (4 value + 4 index) bytes + (rows + 1) x 4 row pointers; biases dense
    assert fp["csr_bytes"] == 1000 * 8 + 51 * 4 + 100 * 8 + 11 * 4 + (50 + 10) * 4
    # at 50 % sparsity int32-indexed CSR saves nothing: every tensor is written dense
    half = copy.deepcopy(dense)
    prune_weights(half, Magnitude(), ["0.weight", "1.weight"], ratio=0.5)
    assert footprint(half)["csr_bytes"] == fp_dense["stored_bytes"]
    assert fp_dense["csr_bytes"] == fp_dense["stored_bytes"] and fp_dense["sparsity"] == 0.0


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 3, 3), (9,)])
def test_csr_bytes_match_torch_sparse_csr(shape):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.3)
    csr = t.reshape(t.shape[0] if t.dim() > 1 else 1, -1).to_sparse_csr()
    expected = csr.values().numel() * 4 + (csr.col_indices().numel() + csr.crow_indices().numel()) * 4
    assert csr_bytes(t) == expected
    assert int(np.count_nonzero(t.numpy())) == csr.values().numel()


def test_search_space_tunes_ratio_and_beta_and_keeps_the_rest():
    import optuna

    from fairsqueeze.engine.trials import suggested_params

    trial = optuna.trial.FixedTrial({"ratio": 0.4, "beta": 0.2})
    fair = METHODS.get("fairprune").from_config({"steps": 2, "estimator": "ggn_mc"})
    params = suggested_params("fairprune", fair.param_dict(), trial)
    assert fair.space(trial) == {"ratio": 0.4, "beta": 0.2}  # only what it searched
    assert (params["ratio"], params["beta"], params["steps"], params["estimator"]) == (0.4, 0.2, 2, "ggn_mc")
    plain = METHODS.get("magnitude_prune").from_config({"scope": "global"})
    params = suggested_params("magnitude_prune", plain.param_dict(), trial)
    assert (params["ratio"], params["scope"]) == (0.4, "global")


def test_filter_layers_leave_the_logits_and_residual_streams_alone():
    model = create_model("resnet18", (3, 32, 32), 4).eval()
    free = filter_layers(model, torch.randn(1, 3, 32, 32))
    assert "layer1.0.conv1" in free and "layer4.1.conv1" in free
    assert not {"conv1", "layer1.0.conv2", "layer2.0.downsample.0", "fc"} & set(free)
    assert len(free) == 8  # the first conv of each of the 8 basic blocks
    mlp_free = filter_layers(create_model("mlp", (6,), 3, hidden=[8, 8]), torch.randn(2, 6))
    assert mlp_free == ["fc1", "fc2"]
