"""Conformance checks for method plugins, usable from a plugin's own test suite.

    from fairsqueeze.testing import check_conformance

    def test_my_method_conforms():
        check_conformance("my_method", {"rank": 2}).assert_ok()

The method runs through the engine, exactly as in a suite, on a tiny task (the file-less
``digits`` parity task, an MLP with layers fc1 (64 -> 32), fc2 (32 -> 16), fc3 (16 -> 2),
one epoch of dense training, seed 0), twice, into two fresh databases. Each check is named
and says why it failed; ``fairsqueeze check-plugin NAME`` prints the same lines. Without
parameters, the method's own ``conformance_params`` are used. A method that changed no
prediction passes with a warning (its parameters may do nothing on the tiny task).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.core.hashing import array_hash

TINY_SEED = 0

# name -> what it guarantees, in the order the checks are reported
CHECKS = {
    "accepts_params": "the parameters are accepted and fit the tiny model",
    "runs": "apply returns an Outcome holding a model, without error",
    "test_split_sealed": "apply never reads the test split",
    "dense_untouched": "the shared dense model is left untouched",
    "valid_outcome": "finite metrics in range and one prediction per row on val and test",
    "footprint": "a footprint with params > 0, stored params <= params, compression ratio > 0",
    "deterministic": "the same seed gives identical metrics and predictions",
}


def tiny_suite_definition(methods: list, seeds=(TINY_SEED,), epochs: int = 2, name: str = "tiny") -> dict:
    """A seconds-long suite on the file-less digits task with a small MLP, as a suite file holds it."""
    return {
        "name": name,
        "seeds": list(seeds),
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
        "tasks": [{"name": "digits", "options": {"target": "parity"}}],
        "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
        "methods": methods,
    }


def tiny_suite(methods: list, seeds=(TINY_SEED,), epochs: int = 2, name: str = "tiny"):
    """:func:`tiny_suite_definition`, parsed."""
    from fairsqueeze.spec.suite import parse_suite

    return parse_suite(tiny_suite_definition(methods, seeds, epochs, name))


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not run, because a check it depends on failed
    reason: str

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{status} {self.name}: {self.reason}"


@dataclass
class Conformance:
    """The checks of one method with one set of parameters; true when every check passed."""

    method: str
    params: dict
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each; they do not fail the check

    @property
    def passed(self) -> bool:
        return len(self.checks) == len(CHECKS) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __getitem__(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def __str__(self) -> str:
        return "\n".join([c.line() for c in self.checks] + [f"WARN {w}" for w in self.warnings])

    def assert_ok(self) -> None:
        if not self.passed:
            failed = [c.line() for c in self.checks if not c.passed]
            raise AssertionError(f"method {self.method!r} does not conform:\n" + "\n".join(failed))


@dataclass
class _Call:
    """One call of a watched ``apply``: the state it was handed and what it did."""

    method: str
    entry_digest: str
    test_reads: int
    returned: str  # "" when apply returned a proper Outcome, else what it returned or raised


def state_digest(model: torch.nn.Module) -> str:
    return array_hash(*(v.detach().cpu().numpy() for v in model.state_dict().values()))


@contextlib.contextmanager
def _watching(classes: dict[str, type], calls: list[_Call]) -> Iterator[None]:
    """Wrap ``apply`` of each class for the duration: record its input and its test reads."""
    from fairsqueeze.methods import Cost, Outcome

    from fairsqueeze.datasets.base import test_split_violations

    saved = {cls: cls.__dict__.get("apply") for cls in classes.values()}

    def watch(name, original):
        def apply(self, ctx):
            call = _Call(name, state_digest(ctx.model), test_split_violations(), "")
            calls.append(call)
            try:
                outcome = original(self, ctx)
            except BaseException as exc:
                call.returned = f"raised {type(exc).__name__}: {exc}"
                raise
            finally:
                call.test_reads = test_split_violations() - call.test_reads
            if not isinstance(outcome, Outcome) or not isinstance(outcome.model, torch.nn.Module):
                call.returned = f"returned {type(outcome).__name__}, expected an Outcome holding an nn.Module"
            elif not isinstance(outcome.cost, Cost):
                call.returned = f"Outcome.cost is a {type(outcome.cost).__name__}, expected a fairsqueeze.methods.Cost"
            return outcome

        return apply

    try:
        for name, cls in classes.items():
            cls.apply = watch(name, cls.apply)
        yield
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.apply
            else:
                cls.apply = original


@contextlib.contextmanager
def _scratch(workdir: Path) -> Iterator[None]:
    """A private dense-model cache, no progress bars, no run-failure log lines (the checks say it)."""
    from fairsqueeze.core.progress import QUIET_ENV
    from fairsqueeze.datasets.base import CACHE_ENV

    saved = {k: os.environ.get(k) for k in (CACHE_ENV, QUIET_ENV)}
    logger = logging.getLogger("fairsqueeze")
    level = logger.level
    os.environ[CACHE_ENV] = str(workdir / "cache")
    os.environ[QUIET_ENV] = "1"
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_conformance(method_name: str, tiny_params: dict | None = None, *, workdir: str | Path | None = None,
                      device: str = "cpu") -> Conformance:
    """Run ``method_name`` with ``tiny_params`` (default: its class's ``conformance_params``) on
    the tiny task and check the plugin contract.

    Raises :class:`fairsqueeze.core.errors.UnknownName` for a method that is not registered (after
    the ``fairsqueeze.methods`` entry points are loaded). ``workdir`` keeps the two databases
    and the dense cache (a temporary folder, removed afterwards, by default).
    """
    from fairsqueeze.cli.plugins import load_plugins

    load_plugins()
    from fairsqueeze.core.registry import METHODS

    cls = METHODS.get(method_name)
    params = dict(getattr(cls, "conformance_params", {}) if tiny_params is None else tiny_params)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fairsqueeze-conformance-") as tmp:
            return check_conformance(method_name, params, workdir=tmp, device=device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = Conformance(method_name, params)
    # a dense run after the method's run on the same in-memory reference shows whether the
    # method changed it: the dense run's input must equal the method's input
    watched = {method_name: cls, "dense": METHODS.get("dense")}
    entries = [{"name": method_name, "params": params}] + ([] if method_name == "dense" else ["dense"])
    stores: list = []
    try:
        with _scratch(workdir):
            _run_checks(report, entries, watched, workdir, device, stores)
    finally:
        for store in stores:  # the databases may live in a folder about to be removed
            store.engine.dispose()
    return report


def _run_checks(report: Conformance, entries: list, watched: dict, workdir: Path, device: str, stores: list) -> None:
    from fairsqueeze.engine.runner import Runner, resolve_device
    from fairsqueeze.store.database import Store

    def add(name: str, passed: bool | None, reason: str) -> None:
        report.checks.append(Check(name, passed, reason or CHECKS[name]))

    def skip_rest(reason: str) -> None:
        for name in CHECKS:
            if name not in {c.name for c in report.checks}:
                add(name, None, reason)

    name = report.method
    runner_device = resolve_device(device)
    for db in ("a", "b"):
        store = Store(f"sqlite:///{workdir / f'{name}-{db}.db'}")
        stores.append(store)
        runner = Runner(store, workdir / "data", runner_device)
        try:
            plan = runner.plan(tiny_suite(entries, epochs=1, name=f"conformance-{db}"))
        except FairsqueezeError as exc:
            add("accepts_params", False, str(exc))
            return skip_rest("the parameters were refused")
        calls: list[_Call] = []
        with _watching(watched, calls):
            runner.run(plan)
        if db == "a":
            add("accepts_params", True, "")
            if not _check_first_run(add, report.warnings.append, name, store, plan, calls):
                return skip_rest("the method did not run")
    first, second = (s.runs_frame().set_index("method").loc[name] for s in stores)
    if second["status"] != "done":
        return add("deterministic", False, f"the second run failed: {_first_line(second['error'])}")
    a, b = _outputs(stores[0], first["key"]), _outputs(stores[1], second["key"])
    differ = [k for k in a if k not in b or not np.array_equal(a[k], b[k], equal_nan=True)]
    add("deterministic", not differ, f"a second run with seed {TINY_SEED} differs in {', '.join(differ[:4])}" if differ else "")


def _check_first_run(add, warn, name: str, store, plan, calls: list[_Call]) -> bool:
    """Add the checks (and warnings) of the first run; false when the method did not run to the end."""
    own = [c for c in calls if c.method == name]
    row = store.runs_frame().set_index("method").loc[name]
    if not own:
        add("runs", False, f"apply was never called: {_first_line(row['error'])}")
        return False
    problem = own[0].returned or ("" if row["status"] == "done" else _first_line(row["error"]))
    add("runs", not problem, problem)
    reads = sum(c.test_reads for c in own)
    add("test_split_sealed", reads == 0,
        f"apply tried to read the test split {reads} time(s); methods see train and val only" if reads else "")
    later = calls[calls.index(own[-1]) + 1:]
    if not later and name == "dense":
        add("dense_untouched", True, "the dense method returns its private copy of the reference")
    elif not later:
        add("dense_untouched", False, "inconclusive: no run used the dense model after the method")
    else:
        changed = any(c.entry_digest != own[0].entry_digest for c in later)
        add("dense_untouched", not changed, "the method changed the shared dense model in place" if changed else "")
    if problem:
        return False
    if "no_effect" in row["flags"]:
        details = (row["info"].get("flag_details") or {}).get("no_effect", "")
        warn(f"the method changed no prediction ({details})")
    task = next(iter(plan.tasks.values()))
    add("valid_outcome", *_outcome_problem(store, row["key"], task))
    fp = store.footprint_frame(keys=[row["key"]]).set_index("name")["value"]
    bad = [f"{k} = {fp.get(k)}" for k, ok in (
        ("params", fp.get("params", 0) > 0),
        ("stored_params", 0 <= fp.get("stored_params", -1) <= fp.get("params", 0)),
        ("compression_ratio", fp.get("compression_ratio", 0) > 0),
    ) if not ok]
    add("footprint", not bad, "invalid footprint: " + ", ".join(bad) if bad else "")
    return True


def _outcome_problem(store, key: str, task) -> tuple[bool, str]:
    metrics = store.metrics_frame(keys=[key])
    if set(metrics["split"]) != {"val", "test"}:
        return False, f"metrics on {sorted(set(metrics['split']))}, expected val and test"
    values = metrics["value"].astype(float)
    if not np.isfinite(values).all():
        return False, "non-finite metrics: " + ", ".join(sorted(set(metrics.loc[~np.isfinite(values), "name"]))[:4])
    accuracy = metrics.loc[metrics["name"] == "accuracy", "value"]
    if accuracy.empty or not accuracy.between(0, 1).all():
        return False, f"accuracy outside [0, 1]: {accuracy.tolist()}"
    for split in ("val", "test"):
        expected = len(getattr(task, split))
        got = len(store.predictions(key, split)["y_pred"])
        if got != expected:
            return False, f"{got} predictions on {split}, expected {expected} (one per row)"
    return True, ""


def _outputs(store, key: str) -> dict[str, Any]:
    out = {}
    for split in ("val", "test"):
        frame = store.metrics_frame(split=split, keys=[key]).set_index("name")["value"].sort_index()
        out.update({f"{split} {k}": np.asarray([v], dtype=float) for k, v in frame.items()})
        out[f"{split} predictions"] = store.predictions(key, split)["y_pred"]
    return out


def _first_line(error: Any) -> str:
    text = error if isinstance(error, str) else ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no error recorded"
