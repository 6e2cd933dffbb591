"""CONTRIBUTING.md works as written: its example plugin conforms, its shared blocks run
inside a method, and its out-of-tree package, built and installed from the blocks of the
file, is found through its entry point and passes the checker (API and command line)."""
import importlib.util
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from fairsqueeze.cli.plugins import load_entry_points
from fairsqueeze.reports.verdicts import all_claims, load_claims

from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.methods.toolbox.factorize import FactorizedLinear
from fairsqueeze.methods.toolbox.quantize import CodedLinear
from fairsqueeze.store.database import Store
from fairsqueeze.testing import CHECKS, check_conformance

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
SHARED_BLOCKS = "inside apply(self, ctx)"


def doc_blocks() -> dict[str, str]:
    """The fenced blocks of CONTRIBUTING.md whose first line is a comment, by that comment."""
    blocks = re.findall(r"```\w+\n# ([^\n]*)\n(.*?)```", DOC.read_text(), re.S)
    return {head: f"# {head}\n{body}" for head, body in blocks}


def shared_blocks() -> str:
    return next(code for head, code in doc_blocks().items() if head.startswith(SHARED_BLOCKS))


@pytest.fixture
def own_registry():
    """Registrations made by a test are undone afterwards."""
    with METHODS.restored():
        yield


@pytest.fixture
def example_plugin(monkeypatch, own_registry):
    module = types.ModuleType("my_methods_magnitude")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(doc_blocks()["my_methods/magnitude.py"], str(DOC), "exec"), module.__dict__)
    return "layer_magnitude_prune"


def test_contributing_example_conforms(isolated, example_plugin):
    assert example_plugin in METHODS.names()
    check_conformance(example_plugin, {}, workdir=isolated).assert_ok()
    runs = Store(f"sqlite:///{isolated}/{example_plugin}-a.db").runs_frame().set_index("method")
    assert runs.loc[example_plugin, "info"]["zeros"] == {"fc2": 256}  # half of fc2's 32x16 weights


def test_contributing_example_searches_its_sparsity_and_keeps_the_entry_s_layer(example_plugin):
    import optuna

    from fairsqueeze.engine.trials import suggested_params

    trial = optuna.trial.FixedTrial({"sparsity": 0.25})
    assert suggested_params(example_plugin, {"sparsity": 0.5, "layer": "fc1"}, trial) == {"sparsity": 0.25, "layer": "fc1"}


class SharedBlocks(Method):
    """Runs the shared-blocks listing of CONTRIBUTING.md on its copy of the dense model."""

    @dataclass
    class Params:
        pass

    def apply(self, ctx):
        exec(compile(shared_blocks(), str(DOC), "exec"), {"ctx": ctx})
        layers = {name: type(m).__name__ for name, m in ctx.model.named_children()}
        return Outcome(model=ctx.model, info={"layers": layers, "fc1_out": ctx.model.fc1.out_features})


def test_shared_blocks_run_as_listed(isolated, monkeypatch, own_registry):
    METHODS.register("shared_blocks")(SharedBlocks)
    check_conformance("shared_blocks", {}, workdir=isolated).assert_ok()
    info = Store(f"sqlite:///{isolated}/shared_blocks-a.db").runs_frame().set_index("method").loc["shared_blocks", "info"]
    # what the listing says each line does happened: a quarter of fc1's 32 neurons removed,
    # fc2 factorized, fc3 stored as int8 codes
    assert info["fc1_out"] == 24
    assert info["layers"]["fc2"] == FactorizedLinear.__name__ and info["layers"]["fc3"] == CodedLinear.__name__


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch, own_registry):
    """CONTRIBUTING.md's package, written to a folder, installed (built by pip, its entry point
    from its pyproject.toml) into a private site folder that is put on sys.path."""
    project = tmp_path / "my-methods"
    blocks = doc_blocks()
    for path in ("pyproject.toml", "my_methods/magnitude.py", "my_methods/claims.yaml", "tests/test_magnitude.py"):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(blocks[path])
    (project / "my_methods" / "__init__.py").write_text("")
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(project)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    [entry_points] = site.glob("my_methods-*.dist-info/entry_points.txt")
    assert "magnitude = my_methods.magnitude" in entry_points.read_text()
    monkeypatch.syspath_prepend(str(site))
    yield project, site
    for name in [m for m in sys.modules if m == "my_methods" or m.startswith("my_methods.")]:
        del sys.modules[name]


def test_out_of_tree_plugin_is_discovered_and_conforms(isolated, installed_plugin):
    project, site = installed_plugin
    assert "layer_magnitude_prune" not in METHODS
    load_entry_points()
    assert "layer_magnitude_prune" in METHODS.names()  # imported through the entry point
    assert METHODS.get("layer_magnitude_prune").__module__ == "my_methods.magnitude"
    # its claim joins the packaged ones
    ids = [c.id for c in all_claims()]
    assert "layer-magnitude-vs-global-magnitude" in ids and len(ids) == len(load_claims()) + 1

    # the plugin's own test, as its author runs it
    spec = importlib.util.spec_from_file_location("plugin_test_magnitude", project / "tests" / "test_magnitude.py")
    plugin_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin_tests)
    plugin_tests.test_layer_magnitude_prune_conforms(isolated / "own-test")

    # and from the command line, in a fresh process that sees the installed package
    env = {**os.environ, "PYTHONPATH": str(site), "FAIRSQUEEZE_CACHE": str(isolated / "cli-cache")}
    cli = subprocess.run(
        [sys.executable, "-m", "fairsqueeze.cli.main", "check-plugin", "layer_magnitude_prune"],  # its own params
        capture_output=True, text=True, env=env, cwd=isolated,
    )
    lines = cli.stdout.splitlines()
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert [line.split(":")[0] for line in lines[:-1]] == [f"PASS {name}" for name in CHECKS]
    assert lines[-1] == "layer_magnitude_prune: conforms"



# what the repository's comments and docs may cite: docs/methods.md by section, nothing outside
CITED_SECTION = re.compile(r"docs/methods\.md\s*§\s*(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?")
OUTSIDE = re.compile(r"(?<![\w/])(?:\.\./shared|shared/reference|(?<!docs/)methods\.md\b)")


def project_files() -> list[Path]:
    root = DOC.parent
    folders = ("bench", "methods", "datasets", "reports", "leaderboard", "tests", "docs")
    files = [p for folder in folders for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".j2")]
    return files + [root / name for name in ("README.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml")]


def test_comments_cite_existing_sections_of_docs_methods_and_nothing_outside():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (DOC.parent / "docs" / "methods.md").read_text(), re.M))
    cited, outside = {}, []
    for path in project_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if path != Path(__file__).resolve():
            outside += [f"{path.name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
        for m in CITED_SECTION.finditer(text):
            cited.setdefault(m.group(1), path.name)
            if m.group(2):
                cited.setdefault(m.group(2), path.name)
    assert outside == []
    assert cited and {s: f for s, f in cited.items() if s not in headings} == {}
