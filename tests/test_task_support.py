"""A method refuses a task it cannot handle when the suite is planned, before anything trains."""
from dataclasses import dataclass

import pytest
import yaml

from fairsqueeze.cli.main import main
from fairsqueeze.core.registry import METHODS
from fairsqueeze.datasets.base import build_task
from fairsqueeze.methods import Method
from fairsqueeze.methods.base import TaskInfo
from fairsqueeze.testing import tiny_suite_definition


class BinaryOnly(Method):
    """A planted plugin for binary labels only."""

    @dataclass
    class Params:
        pass

    def supports(self, task):
        return None if task.num_classes == 2 else f"binary labels only, the task has {task.num_classes} classes"

    def apply(self, ctx):
        raise AssertionError("never reached: the suite is refused before anything trains")


def test_a_binary_only_method_is_refused_on_ten_classes_before_anything_trains(isolated, capsys):
    suite = tiny_suite_definition(["dense", "binary_only"])
    suite["tasks"] = [{"name": "digits", "options": {"target": "digit"}}]  # 10 classes
    path = isolated / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    db = isolated / "r.db"
    with METHODS.registered("binary_only", BinaryOnly):
        assert main(["run", str(path), "--db", f"sqlite:///{db}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "method 'binary_only' cannot run on task digits: digit / planted" in err
    assert err.endswith("binary labels only, the task has 10 classes")
    assert not db.exists() and not (isolated / "cache").exists()  # no dense model trained, nothing written
    assert BinaryOnly().supports(TaskInfo.of(build_task("digits", target="parity"))) is None  # 2 classes: it runs


@pytest.mark.parametrize("name, params", [("fairalm", {}), ("bifp", {}), ("fairlrf", {}), ("fairprune", {}),
                                          ("fairquantize", {}), ("fairquantize_error", {})])
def test_two_group_methods_refuse_a_task_with_three_groups(name, params):
    """What they raised at run time, after the dense model had trained (``needs two groups``)."""
    method = METHODS.get(name).from_config(params)
    three = TaskInfo("t", 2, (8,), (0, 1, 2))
    assert "needs two sensitive groups" in method.supports(three) and "[0, 1, 2]" in method.supports(three)
    assert method.supports(TaskInfo.of(build_task("digits", target="digit"))) is None
    if "unprivileged_group" in method.param_dict():
        chosen = METHODS.get(name).from_config({"unprivileged_group": 3})
        assert "unprivileged_group 3 is not a group of this task" in chosen.supports(TaskInfo("t", 2, (8,), (0, 1)))


def test_methods_without_group_needs_take_any_task():
    for name in ("truncated_svd", "slr_w", "magnitude_prune", "int8_ptq", "dense"):
        assert METHODS.get(name).from_config({}).supports(TaskInfo("t", 10, (3, 8, 8), (0, 1, 2))) is None
