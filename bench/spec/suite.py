"""Suite files: YAML describing tasks x models x methods (with params) x seeds.

Example::

    name: default
    seeds: [0, 1]
    train: {epochs: 10, lr: 0.01}          # default training config of the dense models
    tasks:
      - digits                              # a name, or {name, options}
      - {name: adult, options: {sensitive: sex}}
    models:
      - {name: mlp, options: {hidden: [64, 32]}, tasks: [adult], train: {epochs: 5}}
    methods:
      - dense
      - {name: truncated_svd, params: {layer: fc1}, sweep: {k: [2, 8]}, models: [mlp]}

A method entry's ``sweep`` expands into one entry per combination (for ablations);
``models`` / ``tasks`` restrict where an entry runs; ``post: equal_tpr_thresholds`` gives the
method's model per-group decision thresholds chosen on validation; ``protect: tpr`` makes the method protect
the group with the dense model's lower validation TPR instead of its lower accuracy
(``fairsqueeze.measure.groups``). A task option ``split_seed: per_seed`` draws the task's
split with each run's seed instead of one split for every seed. Every error names the file, the
key path and its line.
"""
from __future__ import annotations

import itertools
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fairsqueeze.core.errors import ConfigError, FairsqueezeError
from fairsqueeze.core.params import check_options, check_types, finite_number
from fairsqueeze.core.registry import MODELS, TASKS, create_method, method_class
from fairsqueeze.measure.groups import DEFAULT_RULE, PROTECT_RULES
from fairsqueeze.spec.entries import POST_STEPS, MethodEntry, ModelEntry, Suite, TaskEntry, label_of
from fairsqueeze.spec.train import TrainConfig
from fairsqueeze.spec.tuning import parse_tuning

TOP_KEYS = {"name", "description", "seeds", "train", "tasks", "models", "methods", "tuning", "needs_gpu"}
TASK_KEYS = {"name", "options"}
MODEL_KEYS = {"name", "options", "train", "tasks"}
METHOD_KEYS = {"name", "params", "sweep", "label", "models", "tasks", "tune", "protect", "post"}
FLOAT_FIELDS = {f.name for f in fields(TrainConfig) if f.type in (float, "float")}  # YAML reads 1e-3 as a string


# -- loading ------------------------------------------------------------------------------


class _Where:
    """Turns a key path into 'file: path (line N)' using the composed YAML node tree."""

    def __init__(self, source: str, root_node):
        self.source = source
        self.root = root_node

    def line(self, path: tuple) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == part]
                if not match:
                    break
                line, node = match[0][0].start_mark.line + 1, match[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def __call__(self, path: tuple, message: str) -> ConfigError:
        text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        line = self.line(path)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.source}: {text or '<top>'}{at}: {message}")


def resolve_suite_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = resources.files("fairsqueeze") / "suites" / f"{name_or_path}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    raise ConfigError(f"suite not found: {name_or_path!r} is neither a file nor a bundled suite ({', '.join(bundled_suites())})")


def bundled_suites() -> list[str]:
    folder = resources.files("fairsqueeze") / "suites"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


SEED_MAX = 2 ** 32 - 1  # NumPy's seeds lie in 0..2**32-1
MAX_DEPTH = 64  # nesting of a suite file: a real one needs under ten levels


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"duplicate key {key!r} on lines {first} and {again}")
        self.key, self.first, self.again = key, first, again


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (the plain loader keeps
    the last one without a word); merge keys (``<<``) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep)


def _depth(node) -> int:
    """How deeply a composed YAML node nests (without recursion)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in node.value]
        elif isinstance(node, yaml.MappingNode):
            stack += [(child, depth + 1) for pair in node.value for child in pair]
    return deepest


def _read(path: Path) -> str:
    """The suite file's text: UTF-8 without NUL bytes, else one line saying where it is not."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a suite file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the suite file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path.name} (line {line}): not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise ConfigError(f"{path.name} (line {text[:text.index(chr(0))].count(chr(10)) + 1}): a NUL byte;"
                          " a suite file is text")
    return text


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite_path(name_or_path)
    text = _read(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _depth(node) > MAX_DEPTH:
            raise ConfigError(f"{path.name}: nested more than {MAX_DEPTH} levels deep; a suite needs a few")
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        raise ConfigError(f"{path.name} (line {exc.again}): key {exc.key!r} is given twice (lines {exc.first} and"
                          f" {exc.again}); keep one") from None
    except RecursionError:
        raise ConfigError(f"{path.name}: nested too deeply to read; a suite needs a few levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path.name}{at}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    return parse_suite(data, _Where(path.name, node), default_name=path.stem)


def _mapping(value, where, path, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise where(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise where(path + (key,), f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    return value


def _entry(value, where, path, allowed) -> dict:
    """An entry is a bare name or a mapping with at least ``name``."""
    if isinstance(value, str):
        return {"name": value}
    entry = _mapping(value, where, path, allowed)
    if not isinstance(entry.get("name"), str):
        raise where(path, "missing 'name'")
    return entry


def _options(value, where, path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _names(value, where, path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where(path, "expected a list of names")
    return tuple(value)


def _train(value, base: dict, where, path) -> TrainConfig:

    value = _options(value, where, path)
    allowed = {f.name for f in fields(TrainConfig)}
    for key in value:
        if key not in allowed:
            raise where(path + (key,), f"unknown training option {key!r} (allowed: {', '.join(sorted(allowed))})")
        try:
            check_types({key: value[key]}, TrainConfig)
        except ConfigError as exc:
            raise where(path + (key,), str(exc)) from None
    merged = {k: finite_number(v) if isinstance(v, str) and k in FLOAT_FIELDS else v
              for k, v in {**base, **value}.items()}
    try:
        return TrainConfig(**merged).check_reference()
    except (ConfigError, TypeError) as exc:
        raise where(path, str(exc)) from None


def parse_suite(data: Any, where: _Where | None = None, default_name: str = "suite") -> Suite:
    where = where or _Where("<suite>", None)
    data = _mapping(data if data is not None else {}, where, (), TOP_KEYS)
    for required in ("tasks", "models", "methods"):
        if not isinstance(data.get(required), list) or not data[required]:
            raise where((required,), "expected a non-empty list")

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise where(("seeds",), "expected a non-empty list of integers")
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= SEED_MAX:
            raise where(("seeds", i), f"seed {seed} is out of range: seeds lie in 0..{SEED_MAX}")
        if seed in seeds[:i]:  # one run per (entry, seed): a repeated seed would be the same computation twice
            raise where(("seeds", i), f"seed {seed} is listed twice")
    base_train = _options(data.get("train"), where, ("train",))
    _train(base_train, {}, where, ("train",))

    tasks = []
    for i, raw in enumerate(data["tasks"]):
        entry = _entry(raw, where, ("tasks", i), TASK_KEYS)
        options = _options(entry.get("options"), where, ("tasks", i, "options"))
        try:
            spec = TASKS.get(entry["name"])
            built = TaskEntry(entry["name"], options).options_for(0)  # split_seed: per_seed is checked as a seed
            check_options(spec.builder, built, f"task {entry['name']!r}")
            check_types(built, spec.builder, f"task {entry['name']!r}")
        except FairsqueezeError as exc:
            raise where(("tasks", i), str(exc)) from None
        tasks.append(TaskEntry(entry["name"], options))

    models = []
    for i, raw in enumerate(data["models"]):
        entry = _entry(raw, where, ("models", i), MODEL_KEYS)
        options = _options(entry.get("options"), where, ("models", i, "options"))
        try:
            check_options(MODELS.get(entry["name"]).builder, options, f"model {entry['name']!r}")
            check_types(options, MODELS.get(entry["name"]).builder, f"model {entry['name']!r}")
        except FairsqueezeError as exc:
            raise where(("models", i), str(exc)) from None
        train = _train(entry.get("train"), base_train, where, ("models", i, "train"))
        models.append(ModelEntry(entry["name"], options, train, _names(entry.get("tasks"), where, ("models", i, "tasks"))))

    tuning = _options(data.get("tuning"), where, ("tuning",))
    _check_tuning_flags(tuning, where)
    methods, labels = [], {}
    for i, raw in enumerate(data["methods"]):
        for method in _method_entries(raw, where, ("methods", i), tuning):
            if method.label in labels:
                raise where(("methods", i), f"label {method.label!r} is already used by methods[{labels[method.label]}];"
                            " give each entry its own label")
            labels[method.label] = i
            methods.append(method)
    _check_budgets(methods, tuning, where)
    needs_gpu = data.get("needs_gpu", False)
    if not isinstance(needs_gpu, bool):
        raise where(("needs_gpu",), "expected true or false")

    return Suite(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")),
        seeds=tuple(seeds),
        tasks=tasks,
        models=models,
        methods=methods,
        source=where.source,
        needs_gpu=needs_gpu,
    )


def _check_tuning_flags(tuning: dict, where) -> None:
    """The tuning block's switches are YAML booleans: ``"no"`` is a non-empty string, which
    Python would read as true."""
    objectives = tuning.get("objectives")
    flags = [(("tuning", "unequal_budgets"), tuning.get("unequal_budgets", False))]
    if isinstance(objectives, dict):
        flags.append((("tuning", "objectives", "compression"), objectives.get("compression", False)))
    for path, value in flags:
        if not isinstance(value, bool):
            raise where(path, f"expected true or false, got {value!r}")


def _check_budgets(methods: list[MethodEntry], tuning: dict, where) -> None:
    """Every tuned entry gets the same number of trials unless the suite allows otherwise."""
    budgets = {m.tune.trials for m in methods if m.tune is not None}
    if len(budgets) > 1 and not tuning.get("unequal_budgets", False):
        raise where(
            ("methods",),
            f"tuned entries have different trial budgets {sorted(budgets)}; equal budgets keep the comparison"
            " fair (set tuning.unequal_budgets: true to allow it; reports show each budget)",
        )


def _method_entries(raw, where, path, tuning: dict | None = None) -> list[MethodEntry]:
    entry = _entry(raw, where, path, METHOD_KEYS)
    try:
        method_class(entry["name"])
    except FairsqueezeError as exc:
        raise where(path + ("name",), str(exc)) from None
    params = _options(entry.get("params"), where, path + ("params",))
    sweep = _options(entry.get("sweep"), where, path + ("sweep",))
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise where(path + ("sweep", key), "expected a non-empty list of values")
    combos = [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())] or [{}]
    tune = None
    if "tune" in entry:
        if sweep:
            raise where(path + ("tune",), "an entry is either swept or tuned, not both")
        if not method_class(entry["name"]).searches():
            raise where(path + ("tune",), f"method {entry['name']!r} has no search space (it does not override"
                                          " space(trial)): it cannot be tuned")
        try:
            tune = parse_tuning(tuning, entry["tune"])
        except ConfigError as exc:
            raise where(path + ("tune",), str(exc)) from None
    protect = entry.get("protect", DEFAULT_RULE)
    if protect not in PROTECT_RULES:
        raise where(path + ("protect",), f"unknown rule {protect!r} (known: {', '.join(PROTECT_RULES)})")
    protect = None if protect == DEFAULT_RULE else protect  # the default leaves the run key as it was
    post = entry.get("post")
    if post is not None and post not in POST_STEPS:
        raise where(path + ("post",), f"unknown step {post!r} (known: {', '.join(POST_STEPS)})")
    if post is not None and "tune" in entry:
        raise where(path + ("post",), "a tuned entry cannot be post-processed (its trials score the model alone)")
    # a default label names what differs from the method alone
    named = {**params, **({"protect": protect} if protect else {}), **({"post": post} if post else {})}
    out = []
    for combo in combos:
        merged = {**params, **combo}
        try:
            method = create_method(entry["name"], merged, where="params")
        except ConfigError as exc:
            raise where(path + ("params",), str(exc).removeprefix("params: ")) from None
        resolved = method.param_dict()
        base = str(entry.get("label") or label_of(entry["name"], named))
        label = entry.get("label") or label_of(entry["name"], {**named, **combo})
        if entry.get("label") and combo:
            label = label_of(entry["label"], combo)
        out.append(
            MethodEntry(
                entry["name"],
                resolved,
                str(label),
                _names(entry.get("models"), where, path + ("models",)),
                _names(entry.get("tasks"), where, path + ("tasks",)),
                entry=path[-1],
                entry_label=base,
                sweep=dict(combo),
                tune=tune,
                protect=protect,
                post=post,
            )
        )
    return out
