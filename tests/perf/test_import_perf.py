"""How long the page commands take to import (``make perf``): the modules ``fairsqueeze report``
and ``fairsqueeze leaderboard`` load before they read a row, each in a fresh interpreter,
side by side with the floor every reading command pays (pandas and SQLAlchemy, which the
store's reader needs). Target: under 1 s of imports for each command.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

IMPORTS = {
    "report": ["fairsqueeze.cli.main", "fairsqueeze.store.reader", "fairsqueeze.reports.data",
               "fairsqueeze.reports.export", "fairsqueeze.reports.html"],
    "leaderboard": ["fairsqueeze.cli.main", "fairsqueeze.store.reader", "fairsqueeze.reports.data",
                    "fairsqueeze.leaderboard.site"],
    "floor": ["pandas", "sqlalchemy"],
}
ROUNDS = 5


def import_seconds(modules: list[str]) -> tuple[float, list[str]]:
    """Seconds to import ``modules`` in a fresh interpreter, and the heavy libraries it loaded."""
    code = ("import importlib, json, sys, time\n"
            "start = time.perf_counter()\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "took = time.perf_counter() - start\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'scipy', 'statsmodels', 'optuna') if m in sys.modules]\n"
            "print(json.dumps([took, heavy]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    took, heavy = json.loads(out.stdout)
    return took, heavy


@pytest.mark.benchmark(group="imports")
@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_a_page_command_imports_in_under_a_second(benchmark, command):
    """Rounds alternate the command's imports with the floor's; the fastest of each is compared
    (the first import of a cold disk cache is not what a user waits for twice)."""
    ours, floor, heavy = [], [], []

    def once():
        took, loaded = import_seconds(IMPORTS[command])
        ours.append(took)
        heavy[:] = loaded
        floor.append(import_seconds(IMPORTS["floor"])[0])

    benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info.update({"command": command, "import_s": min(ours), "floor_s": min(floor),
                                 "heavy_loaded": heavy})
    assert "torch" not in heavy, benchmark.extra_info
    assert min(ours) < 1.0, benchmark.extra_info
