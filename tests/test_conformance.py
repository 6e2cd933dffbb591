"""Every registered method, plugins included, passes ``fairsqueeze.testing.check_conformance``:
a valid outcome on a tiny task whose test split is sealed while the method runs, the shared
in-memory dense model untouched, deterministic. Planted cheating plugins fail the check
that names what they did, and only that one where the others still hold.

Each method runs with its own ``conformance_params`` (what ``fairsqueeze check-plugin NAME``
uses without ``--params``): params that fit the tiny model (an MLP with layers fc1 32 -> fc2
16 -> fc3) and keep the check to seconds.
"""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fairsqueeze.cli.main import main
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.cli.plugins import load_plugins
from fairsqueeze.testing import CHECKS, check_conformance

load_plugins()

@pytest.mark.parametrize("name", METHODS.names())
def test_method_conforms(isolated, name):
    report = check_conformance(name, workdir=isolated)
    assert report.params == METHODS.get(name).conformance_params
    report.assert_ok()
    assert [c.name for c in report.checks] == list(CHECKS)
    assert report.warnings == []  # every built-in changes some prediction with its own params


class _Planted(Method):
    @dataclass
    class Params:
        pass


class ReadsTestByRebuilding(_Planted):
    """Rebuilds its task from the registry and reads the test labels."""

    def apply(self, ctx):
        from fairsqueeze.datasets.base import build_task

        task = build_task("digits", None, target="parity")
        _ = task.test.y
        return Outcome(model=ctx.model)


class ReadsTestAndHidesIt(_Planted):
    """Tries the test split, swallows the error and returns the model unchanged."""

    def apply(self, ctx):
        from fairsqueeze.datasets.base import build_task

        try:
            build_task("digits", None, target="parity").test.x[:1]
        except Exception:
            pass
        return Outcome(model=ctx.model)


class ReachesThroughPrepare(_Planted):
    """Looks for the full task behind the view's prepare function."""

    def apply(self, ctx):
        return Outcome(model=ctx.model, info={"n": len(ctx.task.prepare.__self__.test)})


class ChangesTheSharedModel(_Planted):
    """Finds the dense model through the garbage collector and edits it in place."""

    def apply(self, ctx):
        import gc

        for obj in gc.get_objects():
            if type(obj).__name__ == "DenseReference":
                with torch.no_grad():
                    next(obj.model.parameters()).add_(1.0)
        return Outcome(model=ctx.model)


class IgnoresTheSeed(_Planted):
    """Perturbs its copy with noise from an unseeded generator."""

    def apply(self, ctx):
        noise = np.random.default_rng().normal(0, 0.5, tuple(ctx.model.fc1.weight.shape))
        with torch.no_grad():
            ctx.model.fc1.weight.add_(torch.as_tensor(noise, dtype=ctx.model.fc1.weight.dtype))
        return Outcome(model=ctx.model)


class ReturnsTheBareModel(_Planted):
    """Returns the module instead of an Outcome."""

    def apply(self, ctx):
        return ctx.model


def plant(register_plugin, plugin) -> str:
    return register_plugin(plugin.__name__.lower(), plugin)


@pytest.mark.parametrize("plugin, failing", [
    (ReadsTestByRebuilding, {"runs", "test_split_sealed"}),
    (ReadsTestAndHidesIt, {"runs", "test_split_sealed"}),
    (ReachesThroughPrepare, {"runs"}),  # the view hides the task: the attribute is not there
    (ChangesTheSharedModel, {"dense_untouched"}),
    (IgnoresTheSeed, {"deterministic"}),
    (ReturnsTheBareModel, {"runs"}),
])
def test_conformance_catches_a_cheating_plugin(isolated, register_plugin, plugin, failing):
    report = check_conformance(plant(register_plugin, plugin), {}, workdir=isolated)
    assert not report
    assert {c.name for c in report.checks if c.passed is False} == failing, str(report)
    with pytest.raises(AssertionError, match="does not conform"):
        report.assert_ok()


class Honest(_Planted):
    """The planted plugins' shape without the cheat: the dense copy, unchanged."""

    def apply(self, ctx):
        return Outcome(model=ctx.model)


def test_the_planted_shape_conforms_without_its_cheat(isolated, register_plugin):
    """The failures above come from the cheats, not from the planted plugins' shape."""
    report = check_conformance(plant(register_plugin, Honest), {}, workdir=isolated)
    assert report, str(report)


def test_a_method_that_changes_no_prediction_conforms_with_one_warning(isolated, register_plugin, capsys):
    """The honest plugin returns the dense copy as it is: every check passes, and the command
    says, in one line, that nothing changed."""
    name = plant(register_plugin, Honest)
    assert main(["check-plugin", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    warned = [line for line in lines if line.startswith("WARN")]
    assert len(warned) == 1 and "changed no prediction" in warned[0] and "predictions differ" in warned[0]
    assert lines[-1] == f"{name}: conforms"


def test_refused_parameters_fail_one_check_and_skip_the_rest(isolated):
    report = check_conformance("truncated_svd", {"k": 999}, workdir=isolated)
    assert report["accepts_params"].passed is False and "999" in report["accepts_params"].reason
    assert [c.passed for c in report.checks[1:]] == [None] * (len(CHECKS) - 1)


def test_check_plugin_prints_one_line_per_check(isolated, register_plugin, capsys):
    assert main(["check-plugin", "truncated_svd", "--params", '{"k": 8}']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", f"{name}:"] for name in CHECKS]
    assert lines[-1] == "truncated_svd: conforms"

    assert main(["check-plugin", plant(register_plugin, ChangesTheSharedModel)]) == 1
    out = capsys.readouterr().out
    assert "FAIL dense_untouched: the method changed the shared dense model in place" in out.splitlines()


@pytest.mark.parametrize("argv, message", [
    (["check-plugin", "truncated_svdd"], "unknown method 'truncated_svdd'; did you mean 'truncated_svd'?"),
    (["check-plugin", "dense", "--params", "{k: 8}"], "--params: not valid JSON"),
    (["check-plugin", "dense", "--params", "[8]"], "--params: expected a JSON object"),
])
def test_check_plugin_refuses_bad_input_in_one_line(isolated, capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err
