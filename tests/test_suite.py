"""Suite files: validation errors name the key and its line; sweeps and restrictions expand."""
import textwrap

import pytest

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.spec.suite import bundled_suites, load_suite, parse_suite


def write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD = """\
    name: demo
    seeds: [0, 1]
    tasks:
      - digits
    models:
      - {name: mlp, options: {hidden: [8]}}
    methods:
      - dense
      - {name: truncated_svd, params: {layer: fc1}, sweep: {k: [2, 4, 8]}}
"""


def bound(suite, fingerprint="data-a"):
    return [r.bind(fingerprint) for r in suite.runs()]


def test_plan_expands_sweeps_and_seeds(tmp_path):
    suite = load_suite(write(tmp_path, GOOD))
    runs = bound(suite)
    assert len(runs) == 2 * (1 + 3)
    ks = sorted({r.method.params["k"] for r in runs if r.method.name == "truncated_svd"})
    assert ks == [2, 4, 8]
    assert len({r.key for r in runs}) == len(runs)  # every run has its own key
    assert len({r.dense_key for r in runs}) == 2  # one dense reference per seed


def test_run_key_is_stable_and_depends_on_params(tmp_path):
    a = bound(load_suite(write(tmp_path, GOOD)))
    b = bound(load_suite(write(tmp_path, GOOD.replace("[2, 4, 8]", "[2, 4, 9]"))))
    assert a[0].key == b[0].key  # dense, unchanged
    assert {r.key for r in a} != {r.key for r in b}


def test_run_key_depends_on_the_data_not_on_suite_or_label(tmp_path):
    a = bound(load_suite(write(tmp_path, GOOD)))
    renamed = bound(load_suite(write(tmp_path, GOOD.replace("name: demo", "name: other").replace(
        "{name: truncated_svd,", "{name: truncated_svd, label: svd,"))))
    assert [r.key for r in a] == [r.key for r in renamed]
    other_data = bound(load_suite(write(tmp_path, GOOD)), "data-b")
    assert not {r.key for r in a} & {r.key for r in other_data}
    assert not {r.dense_key for r in a} & {r.dense_key for r in other_data}
    with pytest.raises(RuntimeError, match="fingerprint"):
        load_suite(write(tmp_path, GOOD)).runs()[0].key  # an unbound plan has no keys


def one_key(params):
    suite = parse_suite({"tasks": ["digits"], "models": ["mlp"], "methods": [{"name": "fairlrf", "params": params}]})
    return bound(suite)[0].key


def test_resolved_params_are_hashed():
    defaults = {"k": 64, "sparsity_rate": 0.4, "keep_rate": 0.0, "beta": "5/9", "min_keep": 0, "layer": "fc2"}
    assert one_key({}) == one_key(defaults)
    assert one_key({"beta": "5/9"}) == one_key({"beta": 5 / 9}) == one_key({"beta": 0.5555555555555556})
    assert one_key({"keep_rate": 0}) == one_key({"keep_rate": 0.0})
    assert one_key({"beta": "1/3"}) != one_key({})


def test_a_label_names_one_entry(tmp_path):
    text = GOOD.replace("{name: truncated_svd, params: {layer: fc1}, sweep: {k: [2, 4, 8]}}",
                        "{name: truncated_svd, label: svd, params: {layer: fc1, k: 2}}\n      - {name: truncated_svd, label: svd}")
    with pytest.raises(ConfigError, match=r"methods\[2\].*label 'svd' is already used by methods\[1\]"):
        load_suite(write(tmp_path, text))


@pytest.mark.parametrize(
    "bad, message",
    [
        ("      - {name: truncated_svd, params: {layer: fc1, kk: 3}}", r"methods\[1\]\.params \(line 9\): unknown parameter 'kk'"),
        ("      - {name: truncated_sv}", r"methods\[1\]\.name \(line 9\): unknown method 'truncated_sv'; did you mean 'truncated_svd'"),
        ("      - {name: dense, colour: red}", r"methods\[1\]\.colour \(line 9\): unknown key 'colour'"),
    ],
)
def test_bad_method_entries_name_key_and_line(tmp_path, bad, message):
    text = GOOD.replace("      - {name: truncated_svd, params: {layer: fc1}, sweep: {k: [2, 4, 8]}}", bad)
    with pytest.raises(ConfigError, match=message):
        load_suite(write(tmp_path, text))


def test_bad_task_option_and_top_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(line 4\): task 'digits': unknown option 'colour'"):
        load_suite(write(tmp_path, GOOD.replace("- digits", "- {name: digits, options: {colour: 1}}")))
    with pytest.raises(ConfigError, match=r"sedes \(line 2\): unknown key 'sedes'"):
        load_suite(write(tmp_path, GOOD.replace("seeds:", "sedes:")))
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_suite(write(tmp_path, GOOD + "  - [unclosed\n"))


def test_training_options_are_checked():
    base = {"tasks": ["digits"], "models": ["mlp"], "methods": ["dense"]}
    with pytest.raises(ConfigError, match=r"train\.epoch.*unknown training option 'epoch'"):
        parse_suite({**base, "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown optimizer 'sdg'"):
        parse_suite({**base, "train": {"optimizer": "sdg"}})


def test_restrictions_limit_where_entries_run():
    suite = parse_suite(
        {
            "tasks": ["digits"],
            "models": [{"name": "mlp", "options": {"hidden": [8]}}, {"name": "mlp", "options": {"hidden": [4]}, "tasks": ["adult"]}],
            "methods": ["dense", {"name": "truncated_svd", "params": {"layer": "fc1", "k": 2}, "tasks": ["adult"]}],
        }
    )
    runs = suite.runs()
    assert [(r.model.options["hidden"], r.method.name) for r in runs] == [([8], "dense")]


def test_studies_keep_the_seeds_of_an_entry_side_by_side():
    # workers take studies in this order: equal-cost studies in turn, so neither worker is left
    # alone with the suite's last entry
    suite = parse_suite({
        "seeds": [0, 1], "tasks": ["digits", "adult"], "models": ["mlp"], "tuning": {"trials": 2},
        "methods": ["dense"] + [{"name": m, "params": {"layer": "fc1", "k": 2}, "tune": True} for m in ("truncated_svd", "slr_w")],
    })
    assert [(s.task.name, s.method.name, s.seed) for s in suite.studies()] == [
        (task, method, seed) for task in ("digits", "adult") for method in ("truncated_svd", "slr_w") for seed in (0, 1)]
    assert [(r.seed, r.method.name) for r in suite.runs() if r.task.name == "digits"] == [(0, "dense"), (1, "dense")]


def test_default_suite_is_bundled_and_valid():
    assert "default" in bundled_suites()
    suite = load_suite("default")
    assert {t.name for t in suite.tasks} == {"adult", "compas", "german", "digits", "celeba", "utkface"}
    assert len(suite.seeds) >= 5
    assert any(r.method.name == "truncated_svd" for r in suite.runs())
    # the dense model with per-group thresholds, the Pareto figures' reference, on every binary task (not digits)
    bar = {r.task.name for r in suite.runs() if r.method.name == "dense" and r.method.post == "equal_tpr_thresholds"}
    assert bar == {t.name for t in suite.tasks} - {"digits"}
