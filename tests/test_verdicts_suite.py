"""The bundled verdict suite exercises every claim: matched twins at several ratios, the
claim's protected group, per-seed splits and the post-processing companions."""
from collections import defaultdict

import yaml

from fairsqueeze.reports.verdicts import CLAIMS_FILE
from fairsqueeze.spec.suite import bundled_suites, load_suite

SUITE = load_suite("verdicts")
RUNS = [r for r in SUITE.runs() if r.seed == SUITE.seeds[0]]


def configs(method: str, keys: tuple[str, ...], post=None) -> dict[tuple, set]:
    """(task, model) -> the set of the given params' values of ``method``'s entries."""
    out = defaultdict(set)
    for r in RUNS:
        if r.method.name == method and r.method.post == post:
            out[(r.task.name, r.model.name)].add(tuple(r.method.params[k] for k in keys))
    return out


def test_it_is_bundled_with_five_seeds_and_per_seed_splits():
    assert "verdicts" in bundled_suites() and len(SUITE.seeds) >= 5
    assert all(t.per_seed for t in SUITE.tasks)
    assert all(m.options.get("dropout") == 0.5 for m in SUITE.models if m.name == "vgg11_narrow")


def test_every_claim_and_every_bar_row_has_both_sides_in_the_suite():
    claims = yaml.safe_load(CLAIMS_FILE.read_text())["claims"]
    claims += yaml.safe_load(CLAIMS_FILE.with_name("claims_bar.yaml").read_text())["claims"]
    # the method name a run is stored under (a post-processed run: NAME+STEP)
    methods = {r.method.name + (f"+{r.method.post}" if r.method.post else "") for r in RUNS}
    for claim in claims:
        assert {claim["fair"]["method"], claim["twin"]["method"]} <= methods, claim["id"]


def test_low_rank_runs_at_three_matched_settings_with_the_table_1_one():
    lrf = configs("fairlrf", ("k", "sparsity_rate", "keep_rate", "layer"))
    assert len(lrf) == len({(t.name, m.name) for t in SUITE.tasks for m in SUITE.models
                            if m.tasks is None or t.name in m.tasks})
    for cell, settings in lrf.items():
        assert len(settings) >= 3 and (1, 0.8, 0.65, "fc1,fc2") in settings
        assert configs("slr_w", ("k", "sparsity_rate", "keep_rate", "layer"))[cell] == settings
        assert configs("slr_a", ("k", "sparsity_rate", "keep_rate", "layer"))[cell] == settings
        assert {(k, layer) for k, _, _, layer in settings} == configs("truncated_svd", ("k", "layer"))[cell]


def test_pruning_and_quantization_twins_share_each_ratio():
    for fair, twin, key, least in (("fairprune", "magnitude_prune", "ratio", 3),
                                   ("fairprune_structured", "magnitude_prune_structured", "ratio", 3),
                                   ("fairquantize", "fairquantize_error", "target", 2)):
        for cell, values in configs(fair, (key,)).items():
            assert len(values) >= least and configs(twin, (key,))[cell] == values, (fair, cell)


def test_each_twin_has_its_thresholded_companion_and_the_dense_model_one():
    for twin, keys in (("truncated_svd", ("k",)), ("magnitude_prune", ("ratio",)), ("fairquantize_error", ("target",)),
                       ("unconstrained", ("init", "epochs"))):
        plain, post = configs(twin, keys), configs(twin, keys, post="equal_tpr_thresholds")
        assert post and all(post[cell] == plain[cell] for cell in post), twin
    assert {r.method.post for r in RUNS if r.method.name == "dense"} == {None, "equal_tpr_thresholds"}


def test_each_fair_method_protects_the_group_its_claims_metric_measures_and_the_papers_rule_runs_beside():
    rules = defaultdict(set)
    for r in RUNS:
        rules[r.method.name].add(r.method.protect or "accuracy")
    # EOdd, EOpp1: the lower-TPR group, and the papers' lower-accuracy group for the -paper-rule rows
    assert rules["fairlrf"] == {"tpr", "accuracy"} and rules["fairquantize"] == {"tpr", "accuracy"}
    assert rules["fairprune"] == {"accuracy"} and rules["fairprune_structured"] == {"accuracy"}  # accuracy gap
    claims = yaml.safe_load(CLAIMS_FILE.read_text())["claims"]
    claims += yaml.safe_load(CLAIMS_FILE.with_name("claims_bar.yaml").read_text())["claims"]
    for claim in claims:  # every rule a claim selects has runs
        for side in (claim["fair"], claim["twin"]):
            if "protect" in side:
                assert side["protect"] in rules[side["method"]], claim["id"]
    # the two rules run the same configurations, so their rows differ by the group alone
    for method, keys in (("fairlrf", ("k", "sparsity_rate", "keep_rate", "layer")), ("fairquantize", ("target",))):
        by_rule = defaultdict(set)
        for r in RUNS:
            if r.method.name == method:
                by_rule[r.method.protect].add((r.task.key, r.model.name) + tuple(r.method.params[k] for k in keys))
        assert by_rule["tpr"] == by_rule[None], method


def test_it_spreads_over_nine_cells_tabular_and_image():
    cells = {(t.key, m.name) for t in SUITE.tasks for m in SUITE.models if m.tasks is None or t.name in m.tasks}
    assert len(cells) == 9 and {m for _, m in cells} == {"mlp", "vgg11_narrow"}
