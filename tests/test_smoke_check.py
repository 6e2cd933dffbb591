"""The planning check names entries that changed no prediction on the smoke seed."""
import yaml

from fairsqueeze.cli.main import main
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.store.database import Store
from fairsqueeze.testing import tiny_suite_definition


class Untouched(Method):
    """A planted no-op: returns the dense model as it came."""

    family = "pruning"

    def apply(self, ctx):
        return Outcome(model=ctx.model)


def write_suite(path, methods):
    path.write_text(yaml.safe_dump(tiny_suite_definition(methods, seeds=[0, 1], epochs=1)))
    return str(path)


def run(isolated, methods, *flags):
    suite = write_suite(isolated / "s.yaml", methods)
    return main(["run", suite, "--db", f"sqlite:///{isolated}/r.db", "--jobs", "1", "--quiet", *flags])


def test_a_planted_no_op_entry_is_named_and_refused(isolated, capsys):
    methods = ["dense", {"name": "untouched", "label": "planted"}, {"name": "magnitude_prune", "params": {"ratio": 0.7}}]
    with METHODS.registered("untouched", Untouched):
        assert run(isolated, methods, "--refuse-no-op") == 2
        err = capsys.readouterr().err
        assert "planted on digits" in err and "refusing to run" in err
        assert "magnitude_prune" not in err  # an entry that changed predictions is not named
        stored = Store(f"sqlite:///{isolated}/r.db").runs_frame()
        assert set(stored["seed"]) == {0}  # only the smoke seed ran
        # named but not refused: the suite goes on and finishes
        assert run(isolated, methods, "--smoke-check") == 0
        assert "planted on digits" in capsys.readouterr().err
        assert set(Store(f"sqlite:///{isolated}/r.db").runs_frame()["seed"]) == {0, 1}


def test_without_a_no_op_the_suite_runs(isolated, capsys):
    assert run(isolated, ["dense", {"name": "magnitude_prune", "params": {"ratio": 0.7}}], "--refuse-no-op") == 0
    assert "refusing" not in capsys.readouterr().err


def test_the_smoke_seed_counts_in_the_call_timings(isolated):
    import json

    timings = isolated / "t.json"
    assert run(isolated, ["dense", {"name": "magnitude_prune", "params": {"ratio": 0.7}}], "--smoke-check",
               "--timings", str(timings)) == 0
    measured = json.loads(timings.read_text())
    assert measured["runs"] == 4 and measured["wall_s"] > 0  # 2 entries x 2 seeds, the smoke seed's included
