"""The package's layers, read from the source: no import circle (an import inside a function
and a dynamic ``importlib`` load count too), no layer importing one above it, and a reading
side (the pages) that loads neither torch, nor a plugin, nor the engine."""
import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer and those below. The plugin packages'
# contracts sit low (the engine reads them), their implementations high (only the loader
# in cli/ imports them). The reading side (reports, leaderboard) stands beside the engine
# and is checked separately below.
LAYERS = [
    ("fairsqueeze.core",),
    ("fairsqueeze.measure",),
    ("fairsqueeze.spec",),
    ("fairsqueeze.datasets.base", "fairsqueeze.datasets", "fairsqueeze.models.base", "fairsqueeze.models"),
    ("fairsqueeze.store",),
    ("fairsqueeze.methods.base", "fairsqueeze.methods.toolbox", "fairsqueeze.methods"),
    ("fairsqueeze.reports",),
    ("fairsqueeze.leaderboard",),
    ("fairsqueeze.engine",),
    ("fairsqueeze.datasets.", "fairsqueeze.models.", "fairsqueeze.methods."),  # the plugins themselves
    ("fairsqueeze.cli", "fairsqueeze.testing", "fairsqueeze"),
]
READING = ("fairsqueeze.reports", "fairsqueeze.leaderboard", "fairsqueeze.store.reader")


def layer_of(module: str) -> int:
    """The highest layer whose prefix names the module most precisely (longest prefix wins)."""
    best, length = None, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            exact = module == prefix.rstrip(".")
            inside = module.startswith(prefix if prefix.endswith(".") else prefix + ".")
            if (exact or inside) and len(prefix) > length:
                best, length = rank, len(prefix) + (1 if exact else 0)
    assert best is not None, f"{module} belongs to no layer"
    return best


def package_modules() -> dict[str, Path]:
    """Module name -> file, from the package-dir mapping in pyproject.toml (subpackages included)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in sorted(dirs.items(), key=lambda kv: len(kv[1])):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path  # a deeper mapping (methods/toolbox) overrides
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports: static imports at any depth of the file, and every
    module a file that loads modules dynamically names in a string."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    hints_only = {id(n) for block in ast.walk(tree)  # never executed: `if TYPE_CHECKING:` blocks
                  if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                  for stmt in block.body for n in ast.walk(stmt)}
    targets = []
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    source = path.read_text()
    if "import_module" in source or "__import__" in source:
        targets += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in known]
    found = set()
    for target in targets:
        while target and target not in known:  # a name inside a module counts as the module
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_a_dynamic_load_is_an_edge(tmp_path):
    loader = tmp_path / "loader.py"
    loader.write_text('from importlib import import_module\nimport_module("pkg.plugin")\n')
    assert imports_of("pkg.loader", loader, {"pkg.loader", "pkg.plugin"}) == {"pkg.plugin"}


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("fairsqueeze.engine.runner") > layer_of("fairsqueeze.store.database")
    assert layer_of("fairsqueeze.methods.fairalm") > layer_of("fairsqueeze.engine.training")
    assert layer_of("fairsqueeze.methods.base") < layer_of("fairsqueeze.engine.execute")


def test_no_import_circles_in_fairsqueeze():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_a_layer_above_it():
    upward = [f"{u} -> {v}" for u, vs in graph().items() for v in vs if layer_of(v) > layer_of(u)]
    assert not upward, "imports that climb: " + "; ".join(sorted(upward))


def test_the_registry_imports_no_plugin():
    edges = graph()
    assert edges["fairsqueeze.core.registry"] <= {"fairsqueeze.core.errors"}


def test_the_reading_side_reaches_no_engine_and_no_plugin():
    edges = graph()
    forbidden = ("fairsqueeze.engine", "fairsqueeze.cli", "fairsqueeze.methods", "fairsqueeze.models",
                 "fairsqueeze.datasets")
    for start in [m for m in edges if m.startswith(READING)]:
        seen, todo = set(), [start]
        while todo:
            for v in edges[todo.pop()] - seen:
                seen.add(v)
                todo.append(v)
        bad = sorted(v for v in seen if v.startswith(forbidden))
        assert not bad, f"{start} reaches {bad}"


@pytest.mark.parametrize("modules", [
    ["fairsqueeze.reports"],
    ["fairsqueeze.reports.html", "fairsqueeze.reports.verdicts", "fairsqueeze.reports.api",
     "fairsqueeze.leaderboard.site", "fairsqueeze.store.reader"],
])
def test_the_pages_import_without_torch_plugins_or_the_engine(modules):
    """Imported in a fresh interpreter: what the report and leaderboard commands load."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith("
            "('fairsqueeze.engine', 'fairsqueeze.methods', 'fairsqueeze.datasets', 'fairsqueeze.models')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
