"""Progress lines for logs and one warning line per flag."""
import io
import re
import logging
import time

from tiny import tiny_suite
from fairsqueeze.core.progress import LogProgress
from fairsqueeze.core.registry import METHODS
from fairsqueeze.datasets.base import data_root
from fairsqueeze.engine.runner import Runner, resolve_device
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.store.database import Store


def test_a_timer_prints_done_total_failures_and_an_eta_while_runs_take_long():
    out = io.StringIO()
    with LogProgress(4, "suite s", stream=out, interval=0.05, enabled=True) as progress:
        progress.update()
        progress.update(failed=1)
        time.sleep(0.3)  # no update for several intervals: lines keep coming
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[0].startswith("suite s: 2/4 run(s) done, 1 failed, 0s elapsed, ETA ")
    assert "ETA 0s" in lines[-1]  # 2 runs in ~0.3 s: the other 2 take about as long


def test_on_a_terminal_or_when_quiet_it_stays_silent(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    with LogProgress(2, "s", stream=out, interval=0.01) as progress:
        progress.update()
        time.sleep(0.05)
    assert out.getvalue() == ""
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "1")
    assert not LogProgress(2, "s", stream=io.StringIO()).enabled


class Untouched(Method):
    def apply(self, ctx):
        return Outcome(model=ctx.model)


def test_the_runner_logs_progress_and_folds_flag_warnings(isolated, monkeypatch, capsys, caplog):
    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "")
    monkeypatch.setenv("FAIRSQUEEZE_PROGRESS_INTERVAL", "0.01")
    with METHODS.registered("untouched", Untouched), caplog.at_level(logging.WARNING, "fairsqueeze"):
        suite = tiny_suite(["dense", "untouched"], seeds=(0, 1, 2), epochs=1)
        Runner(Store(f"sqlite:///{isolated}/r.db"), data_root(), resolve_device("cpu")).run(suite)
    assert "suite tiny: 6/6 run(s) done, 0 failed" in capsys.readouterr().err
    flagged = [r.getMessage() for r in caplog.records if "no_effect" in r.getMessage()]
    assert len(flagged) == 1 and flagged[0].startswith("3 run(s) flagged no_effect")


def test_the_worker_logs_its_items_trials_included(isolated, monkeypatch, capsys):
    from fairsqueeze.engine.plan import plan_suite
    from fairsqueeze.engine.worker import Worker
    from fairsqueeze.spec.suite import parse_suite
    from fairsqueeze.testing import tiny_suite_definition

    monkeypatch.setenv("FAIRSQUEEZE_QUIET", "")
    monkeypatch.setenv("FAIRSQUEEZE_PROGRESS_INTERVAL", "0.01")
    definition = tiny_suite_definition(["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 4},
                                                  "tune": {"trials": 3}}], epochs=1)
    definition["tuning"] = {"trials": 3, "sampler": {"name": "random", "seed": 1}, "policies": ["best_utility"]}
    suite = parse_suite(definition)
    runner = Runner(Store(f"sqlite:///{isolated}/r.db"), data_root(), resolve_device("cpu"))
    Worker(runner).run(plan_suite(suite, data_root()))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    done, total = re.match(r"suite tiny: (\d+)/(\d+) item\(s\) done, 0 failed", last).groups()
    assert done == total and int(total) >= 4  # the dense run and 3 trials at least
