"""The plugin example in CONTRIBUTING.md works: it registers, runs and passes conformance."""
import re
import sys
import types
from pathlib import Path

import pytest

from fairsqueeze.methods import METHODS
from fairsqueeze.store import Store
from fairsqueeze.testing import check_conformance

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@pytest.fixture
def example_plugin(monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    module = types.ModuleType("my_methods_magnitude")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # registration is undone afterwards
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return "layer_magnitude_prune"


def test_contributing_example_conforms(isolated, example_plugin):
    assert example_plugin in METHODS.names()
    check_conformance(example_plugin, {}, workdir=isolated).assert_ok()
    runs = Store(f"sqlite:///{isolated}/{example_plugin}-a.db").runs_frame().set_index("method")
    info = runs.loc[example_plugin, "info"]
    assert info["zeros"] == {"fc2": 256}  # half of fc2's 32x16 weights


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """A third-party package's entry point is imported the first time the registry is read."""
    (tmp_path / "ext_plugin.py").write_text(
        "from dataclasses import dataclass\n"
        "from fairsqueeze.methods import Method, Outcome, register_method\n"
        "@register_method('ext_identity')\n"
        "class ExtIdentity(Method):\n"
        "    '''Returns the dense model.'''\n"
        "    def apply(self, ctx):\n"
        "        return Outcome(model=ctx.model)\n"
    )
    dist = tmp_path / "ext_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fairsqueeze.methods]\next = ext_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    assert "ext_identity" in METHODS.names()
