"""The wheel is complete: built without a setuptools warning, installed (not editable) into a
fresh virtual environment, it runs a tiny suite and renders its report from the shipped
templates. The source distribution carries what the tests and the README need, and the
declared licence's text. The fresh environment borrows this one's dependencies through a .pth line, which
adds their folder to sys.path without running its .pth files, so this checkout's editable
install is invisible there."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from fairsqueeze.testing import tiny_suite_definition

ROOT = Path(__file__).resolve().parents[1]
# a warning class in the build log (SetuptoolsWarning, SetuptoolsDeprecationWarning,
# BuildBackendWarning...); distutils' lower-case "warning: ... byte-compiling is disabled"
# lines only echo PYTHONDONTWRITEBYTECODE
BUILD_WARNING = re.compile(r"\b\w*Warning\b")


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# what a checkout holds beside its sources (the .gitignore's entries and git's own folder)
NOT_SOURCE = (".git", ".venv", "results", "data", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
              ".benchmarks", "*.pyc")


def source_copy(dest: Path) -> Path:
    """What the wheel and the sdist are built from: the checkout without its environment,
    results, data and caches."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return dest


def source_files(folder: str) -> list[str]:
    """The files under a folder of the checkout, relative to its root."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def backend_installed() -> bool:
    """Whether this environment holds the build backend pyproject.toml asks for (then the
    build needs no index); a fresh venv's bundled setuptools may be too old."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in map(Requirement, config["build-system"]["requires"]):
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_copy(tmp / "src")
    offline = ["--no-build-isolation", "--no-index"] if backend_installed() else []
    build = run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-v", "-w", tmp / "dist", src])
    [built] = (tmp / "dist").glob("fairsqueeze-*.whl")
    return built, build.stdout + build.stderr


def test_the_wheel_carries_the_licence(wheel):
    built, _ = wheel
    names = zipfile.ZipFile(built).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tuple[dict[str, bytes], str]:
    """The sdist's files by path (inside its top folder) and its build log."""
    tmp = tmp_path_factory.mktemp("sdist")
    src = source_copy(tmp / "src")
    build = run([sys.executable, "-c", "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                 tmp / "dist"], cwd=src)
    [built] = (tmp / "dist").glob("fairsqueeze-*.tar.gz")
    with tarfile.open(built) as archive:
        files = {m.name.split("/", 1)[1]: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    return files, build.stdout + build.stderr


def test_the_sdist_carries_what_the_tests_and_the_readme_need(sdist):
    files, log = sdist
    assert "no files found matching" not in log and not BUILD_WARNING.findall(log), log
    needed = source_files("tests") + source_files("docs") + ["Makefile", "CONTRIBUTING.md", "README.md",
                                                             "pyproject.toml", "LICENSE"]
    assert [path for path in needed if path not in files] == []
    assert {"tests/conftest.py", "tests/tiny.py", "tests/synthetic_results.py", "docs/methods.md"} <= set(files)
    readme = files["README.md"].decode()
    links = {link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", readme) if "://" not in link}
    assert links and [link for link in links if link not in files] == []  # every file the README points at


def test_the_declared_licence_has_its_text(sdist):
    files, _ = sdist
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == "MIT" and config["project"]["license-files"] == ["LICENSE"]
    text = files["LICENSE"].decode()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the fairsqueeze authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    metadata = files["PKG-INFO"].decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata


def test_the_build_prints_no_setuptools_warning(wheel):
    _, log = wheel
    assert "Successfully built fairsqueeze" in log
    assert not BUILD_WARNING.findall(log), [line for line in log.splitlines() if BUILD_WARNING.search(line)]


def test_the_installed_wheel_renders_a_report(wheel, tmp_path):
    built, _ = wheel
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    fresh_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (fresh_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", built])

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(FAIRSQUEEZE_CACHE=str(tmp_path / "cache"), FAIRSQUEEZE_QUIET="1")
    work = tmp_path / "work"
    work.mkdir()
    where = run([python, "-c", "import fairsqueeze; print(fairsqueeze.__file__)"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(fresh_site)  # the installed copy, not this checkout
    assert (fresh_site / "fairsqueeze" / "reports" / "templates" / "report.html.j2").is_file()

    suite = work / "tiny.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite_definition(["dense", {"name": "truncated_svd", "params": {"k": 8}}],
                                                          epochs=1, name="packaged")))
    fairsqueeze = env_dir / "bin" / "fairsqueeze"
    db = f"sqlite:///{work / 'results.db'}"
    run([fairsqueeze, "run", suite, "--db", db, "--device", "cpu", "--quiet"], cwd=work, env=env)
    report = run([fairsqueeze, "report", "packaged", "--db", db, "--out", work / "report"], cwd=work, env=env)
    assert "report:" in report.stdout
    page = (work / "report" / "index.html").read_text()
    assert "truncated_svd" in page and "packaged" in page
