"""bench/store.py: the owner of the database (tables, slots, leases, locks, errors)."""
import sqlite3

import pytest

from fairsqueeze.cli.main import main
from fairsqueeze.store.database import Store, StoreError, masked, sqlite_single_writer
from tiny import tiny_suite

WRONG = "postgresql+psycopg://someone:WRONG-secret@127.0.0.1:1/nowhere"


def test_a_trial_slot_starts_only_within_the_budget_and_only_once(tmp_path):
    """Two processes' stores on one file: a slot is started once, and never beyond the budget of
    complete or running slots, whatever the interleaving."""
    url = f"sqlite:///{tmp_path}/s.db"
    first, second = Store(url), Store(url)
    assert first.start_slot("study", 0, budget=2)
    assert not second.start_slot("study", 0, budget=2)  # already started elsewhere
    assert second.start_slot("study", 1, budget=2)
    assert not first.start_slot("study", 2, budget=2)  # two running: the budget is spoken for
    first.set_slot("study", 0, "failed")
    assert first.start_slot("study", 2, budget=2)  # a failed slot does not use the budget
    first.set_slot("study", 1, "complete")
    first.set_slot("study", 2, "complete")
    assert not second.start_slot("study", 3, budget=2)
    assert first.retry_slot("study", 0, max_attempts=2) and not first.retry_slot("study", 0, max_attempts=2)
    assert list(first.slots("study")["attempts"]) == [2, 1, 1]


def test_the_single_writer_guard_follows_the_file_through_a_symlink_and_leaves_nothing(tmp_path):
    db = tmp_path / "real.db"
    (tmp_path / "link.db").symlink_to(db)
    with sqlite_single_writer(f"sqlite:///{db}"):
        with pytest.raises(StoreError, match="SQLite allows one writer"):
            with sqlite_single_writer(f"sqlite:///{tmp_path}/link.db"):
                pass
    with sqlite_single_writer(f"sqlite:///{tmp_path}/link.db"):  # released when the holder ends
        Store(f"sqlite:///{tmp_path}/link.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.db", "real.db"]  # no lock file beside it


def test_runs_record_the_method_family_and_registry_position(isolated):
    from fairsqueeze.core.registry import METHODS
    from fairsqueeze.engine.runner import Runner, resolve_device
    from fairsqueeze.datasets.base import data_root

    store = Store(f"sqlite:///{isolated}/f.db")
    Runner(store, data_root(), resolve_device("cpu")).run(
        tiny_suite(["dense", {"name": "truncated_svd", "params": {"layer": "fc2", "k": 4}}], epochs=1), jobs=1)
    runs = store.runs_frame().set_index("method")
    for name in ("dense", "truncated_svd"):
        assert runs.loc[name, "family"] == METHODS.get(name).family
        assert runs.loc[name, "method_order"] == METHODS.position(name)


def test_a_read_only_database_is_one_line(tmp_path, capsys):
    path = tmp_path / "ro.db"
    Store(f"sqlite:///{path}")
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    with pytest.raises(StoreError, match="cannot be written"):
        Store(url)
    Store(url, read_only=True)  # reading it is fine
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks: [{name: digits, options: {target: parity}}]\nmodels: [mlp]\nmethods: [dense]\n")
    assert main(["run", str(suite), "--db", url, "--quiet", "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the database cannot be written" in err


@pytest.mark.parametrize("command", [["show"], ["fronts"], ["leaderboard"]])
def test_database_errors_are_one_line_with_the_password_masked(command, capsys):
    assert main([*command, "--db", WRONG]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "WRONG-secret" not in err and "someone:***@" in err


def test_run_and_worker_database_errors_are_one_line_with_the_password_masked(isolated, capsys):
    import yaml

    path = isolated / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "train": {"epochs": 1},
                                    "tasks": [{"name": "digits", "options": {"target": "parity"}}],
                                    "models": [{"name": "mlp", "options": {"hidden": [8]}}],
                                    "methods": ["dense", {"name": "truncated_svd", "params": {"layer": "fc1", "k": 2},
                                                          "tune": {"trials": 1}}]}))
    for command in ("run", "worker"):
        assert main([command, str(path), "--db", WRONG, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "WRONG-secret" not in err and "cannot open the database" in err


def test_masking_keeps_everything_but_the_password():
    assert masked(WRONG) == "postgresql+psycopg://someone:***@127.0.0.1:1/nowhere"
    assert masked("sqlite:///results/x.db") == "sqlite:///results/x.db"


def test_the_file_is_a_sqlite_database_after_the_guard_created_it(tmp_path):
    with sqlite_single_writer(f"sqlite:///{tmp_path}/new.db"):
        Store(f"sqlite:///{tmp_path}/new.db")
    assert sqlite3.connect(tmp_path / "new.db").execute("select value from meta").fetchone() is not None


def test_a_lease_is_exclusive_until_it_expires_and_then_taken_over(postgres_url):
    import time

    store = Store(postgres_url)
    store.ensure_work({"run-1": "run"})
    assert store.claim("run-1", "a", lease_s=0.5)
    assert not store.claim("run-1", "b", lease_s=5)  # a's lease is live
    time.sleep(0.7)  # a stopped renewing (it died)
    assert store.claim("run-1", "b", lease_s=5)  # taken over
    assert not store.renew("run-1", "a", lease_s=5)  # a learns it lost the lease
    store.release("run-1", "b", failed=True)
    assert not store.claim("run-1", "c", lease_s=5, failed_before=time.time() - 60)  # failed since c started
    assert store.claim("run-1", "c", lease_s=5, failed_before=time.time() + 1)
    assert store.work_frame().set_index("key").loc["run-1", "holder"] == "c"
