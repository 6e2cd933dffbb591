"""The package's modules import each other without a circle (every import counts, also one
inside a function: a circle hidden in a function is still a climb back up the layers)."""
import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, Path]:
    """Module name -> file, from the package-dir mapping in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out = {}
    for package, folder in config["package-dir"].items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (absolute or relative, at any depth of the file)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module counts as the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    # a package's __init__ importing its own submodules (a plugin package registering its
    # plugins) is how a package is loaded, not a climb back
    edges = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    for name, path in modules.items():
        if path.stem == "__init__":
            edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    return edges


def test_the_circle_finder_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_fairsqueeze():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_run_path_goes_down_the_layers():
    """CLI -> suite -> plan -> execute -> store: the engine's lower layers never import upwards."""
    edges = graph()
    upper = {"fairsqueeze.cli.main", "fairsqueeze.engine.runner", "fairsqueeze.engine.worker", "fairsqueeze.engine.jobs"}
    for lower in ("fairsqueeze.engine.execute", "fairsqueeze.engine.plan", "fairsqueeze.spec.suite", "fairsqueeze.store.database",
                  "fairsqueeze.spec.tuning", "fairsqueeze.engine.reference"):
        assert not edges[lower] & upper, (lower, edges[lower] & upper)
    assert "fairsqueeze.engine.execute" not in edges["fairsqueeze.store.database"] | edges["fairsqueeze.engine.plan"]
