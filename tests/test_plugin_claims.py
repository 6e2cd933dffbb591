"""Claims beside the packaged file: those an installed plugin package ships (the
``fairsqueeze.claims`` entry point) and those a user adds with ``--claims FILE``. They join the
one Holm family of the verdict table; the pages read the plugin's file without importing it."""
import subprocess
import sys
import textwrap
import warnings

import pandas as pd
import pytest

from synthetic_results import make_results, write_store
import fairsqueeze
from fairsqueeze.cli.main import main
from fairsqueeze.reports.terminal import _fit
from fairsqueeze.reports.verdicts import load_claims
from fairsqueeze.store.database import Store

CLAIM = """\
claims:
  - id: {id}
    claim: FairLRF lowers EOdd against truncated SVD on the planted task
    source: {source}
    fair: {{method: fairlrf}}
    twin: {{method: truncated_svd}}
    metric: eodd
    direction: lower
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claims")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(tasks=(("digits: parity / planted", 2),), seeds=(0, 1, 2))
    write_store(made, Store(f"sqlite:///{folder}/r.db"))
    return f"sqlite:///{folder}/r.db"


@pytest.fixture
def installed_claims(tmp_path, monkeypatch):
    """A plugin package that ships a claims.yaml and declares it by entry point, installed by
    pip into a private site folder put on sys.path. Importing the package fails, so a page
    that imported it (rather than reading its file) would fail too."""
    project = tmp_path / "claims-plugin"
    (project / "claims_plugin").mkdir(parents=True)
    (project / "claims_plugin" / "__init__.py").write_text("raise ImportError('a page imported a plugin')\n")
    (project / "claims_plugin" / "claims.yaml").write_text(CLAIM.format(id="plugin-fairlrf-vs-svd", source="a plugin"))
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=77"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "claims-plugin"
        version = "1.0"

        [project.entry-points."fairsqueeze.claims"]
        claims_plugin = "claims_plugin"

        [tool.setuptools.package-data]
        claims_plugin = ["claims.yaml"]
        """))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(project)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    monkeypatch.syspath_prepend(str(site))
    return site


def test_an_installed_plugin_ships_a_claim_and_its_row_is_read(stored, installed_claims):
    table = fairsqueeze.open_results(stored).verdicts("synthetic").set_index("id")
    packaged = {c.id for c in load_claims()}
    assert "plugin-fairlrf-vs-svd" in table.index and packaged <= set(table["claim_id"])
    row = table.loc["plugin-fairlrf-vs-svd"]
    assert row["cells"] == 1 and row["verdict"] != "untested"  # the synthetic store has both methods
    assert "claims_plugin" not in sys.modules


def test_without_the_plugin_its_claim_is_absent(stored):
    assert "plugin-fairlrf-vs-svd" not in set(fairsqueeze.open_results(stored).verdicts("synthetic")["id"])


def test_a_claims_file_joins_the_report_and_the_leaderboard(stored, tmp_path, capsys):
    extra = tmp_path / "mine.yaml"
    extra.write_text(CLAIM.format(id="my-fairlrf-claim", source="my notes"))
    assert main(["report", "synthetic", "--db", stored, "--out", str(tmp_path / "r"), "--claims", str(extra)]) == 0
    assert "my-fairlrf-claim" in (tmp_path / "r" / "index.html").read_text()
    # the command prints the verdict table too, one line per row, the rows of the CSV
    printed = capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "r" / "tables" / "verdicts.csv")
    assert printed.startswith("== verdicts (")
    for row in csv.itertuples():
        (line,) = [ln for ln in printed.splitlines() if ln.startswith(f"{_fit(row.id, 44):<44}  ")]
        assert row.verdict in line and f"{row.cells}·{row.pairs}" in line
    assert main(["leaderboard", "--db", stored, "--out", str(tmp_path / "b"), "--claims", str(extra)]) == 0
    assert "my-fairlrf-claim" in (tmp_path / "b" / "index.html").read_text()
    table = fairsqueeze.open_results(stored, claims=[extra]).verdicts("synthetic")
    assert "my-fairlrf-claim" in set(table["id"])


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read"),
    ("claims: [{id: x}]", "KeyError"),
    (CLAIM.format(id="fairlrf-vs-truncated-svd", source="again"), "'fairlrf-vs-truncated-svd' is already defined"),
])
def test_a_bad_claims_file_is_one_line(stored, tmp_path, capsys, content, message):
    extra = tmp_path / "bad.yaml"
    if content is not None:
        extra.write_text(content)
    code = main(["report", "synthetic", "--db", stored, "--out", str(tmp_path / "r"), "--claims", str(extra)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err
