"""bench/execute.py: one unit of work, the same for a trial and for the run that reproduces it."""
import math
import threading
from dataclasses import dataclass, replace

import pytest
import torch

from tiny import tiny_suite
from fairsqueeze.engine.execute import Computer, execute_run, execute_trial, prepare_reference
from fairsqueeze.core.registry import METHODS
from fairsqueeze.methods import Method, Outcome
from fairsqueeze.engine.plan import plan_suite
from fairsqueeze.spec.entries import MethodEntry
from fairsqueeze.datasets import base as tasks
from fairsqueeze.datasets.base import data_root
from fairsqueeze.spec.tuning import parse_tuning

CPU = torch.device("cpu")
# one method per family, and every family whose outcome depends on the method seed (scoring
# samples, retraining batches)
FAMILIES = {
    "truncated_svd": {"layer": "fc2", "k": 4},
    "fairlrf": {"layer": "fc2", "k": 8, "scoring_size": 16},
    "fairprune": {"ratio": 0.5, "scoring_size": 16},
    "magnitude_prune_structured": {"ratio": 0.3},
    "int8_ptq": {},
    "fairquantize": {"target": 0.1, "epochs": 1, "batch_size": 16, "scoring_size": 32, "curvature_batch_size": 32},
    "fairalm": {"epochs": 1, "batch_size": 64, "inner_steps": 2},
    "bifp": {"sparsity": 0.5, "epochs": 1, "batch_size": 64, "lr": 0.05},
}
SEEDED = ("fairlrf", "fairprune", "fairquantize")  # a different method seed gives another model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """(plan, task, spec of the dense run, reference) of a tiny digits MLP trained for one epoch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRSQUEEZE_CACHE", str(tmp_path_factory.mktemp("cache")))
        plan = plan_suite(tiny_suite(["dense"], epochs=1), data_root())
        spec = plan.runs[0]
        task = plan.tasks[spec.task.key]
        reference, _ = prepare_reference(spec, task, CPU)
    return plan, task, spec, reference


def equal_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in
                                        ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_selected_configuration_reproduces_its_trial(dense, name):
    """The selected run applies the trial's params with the trial's method seed: its validation
    metrics are the trial's, bit for bit. Run with the run's own seed instead, the seeded
    families give another model (what selected runs reported before)."""
    plan, task, spec, reference = dense
    tune = parse_tuning({"trials": 1}, True)
    trial_seed = 987654
    trial = execute_trial(name, FAMILIES[name], trial_seed, task, reference, CPU, tune)
    entry = MethodEntry(name, METHODS.get(name).from_config(FAMILIES[name]).param_dict(), name, seed=trial_seed)
    selected = replace(spec, method=entry)
    result, _ = execute_run(selected, task, reference, CPU)
    assert equal_metrics(trial.metrics, result.metrics["val"])
    if name in SEEDED:
        own_seed, _ = execute_run(replace(spec, method=replace(entry, seed=None)), task, reference, CPU)
        assert not equal_metrics(trial.metrics, own_seed.metrics["val"])


def test_the_method_seed_is_part_of_the_run_key(dense):
    _, _, spec, _ = dense
    keys = {replace(spec, method=replace(spec.method, seed=s)).key for s in (None, 1, 2)}
    assert len(keys) == 3
    assert replace(spec, method=replace(spec.method, seed=None)).key == spec.key  # fixed runs keep their keys


class _ThreadPeek(Method):
    """Reads the test split from a thread it starts, and swallows the error there."""

    @dataclass
    class Params:
        pass

    def apply(self, ctx):
        from fairsqueeze.datasets.base import build_task

        seen = []

        def peek():
            try:
                seen.append(len(build_task("digits", None, target="parity").test))
            except tasks.TestSplitSealed:
                seen.append("sealed")

        thread = threading.Thread(target=peek)
        thread.start()
        thread.join()
        return Outcome(model=ctx.model, info={"seen": seen})


@pytest.fixture
def thread_peek(register_plugin):
    return register_plugin("thread_peek", _ThreadPeek)


def test_the_seal_holds_in_threads_a_method_starts(dense, thread_peek, isolated):
    """The seal is per process: a method that reads the test split from a new thread fails, in
    a run and in a trial, although the thread caught the error."""
    _, task, spec, reference = dense
    run = replace(spec, method=MethodEntry(thread_peek, {}, thread_peek))
    with pytest.raises(Exception, match="tried to read the test split"):
        execute_run(run, task, reference, CPU)
    with pytest.raises(Exception, match="tried to read the test split"):
        execute_trial(thread_peek, {}, 0, task, reference, CPU, parse_tuning({"trials": 1}, True))
    # the computer turns it into the run's stored error, never a crash of the suite
    computed = Computer(CPU, tasks={spec.task.key: task}).run(run)
    assert computed.result is None and "tried to read the test split" in computed.error


def test_the_computer_reuses_its_dense_reference_and_reports_it_once(dense, isolated):
    plan, task, spec, _ = dense
    computer = Computer(CPU, tasks=dict(plan.tasks))
    first = computer.run(spec)
    second = computer.run(spec)
    assert first.dense_row is not None and second.dense_row is None
    assert first.result.metrics == second.result.metrics


def test_split_metrics_is_what_a_trial_is_scored_on(dense):
    """The helper a method uses to pick among its checkpoints on validation gives the metrics
    the engine scores a trial with (same predictions, same definitions)."""
    from fairsqueeze.measure.evaluate import split_metrics
    from fairsqueeze.engine.execute import score_on_validation

    _, task, _, reference = dense
    tune = parse_tuning({"trials": 1}, True)
    scored = score_on_validation(reference.model, (), task.view(), reference.footprint, CPU, tune,
                                 reference.val_predictions())
    assert equal_metrics(split_metrics(reference.model, task.val, task.prepare, CPU, task.num_classes), scored.metrics)
