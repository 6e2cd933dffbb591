"""A method's cost in three units that are never added together: passes (forward, backward),
optimizer steps and seconds; stored apart and shown under their own headers."""
import math

import pandas as pd
import pytest

from fairsqueeze.methods import Cost
from fairsqueeze.reports.columns import add_derived, comparison_columns, run_cost


def test_a_cost_refuses_steps_or_seconds_among_its_passes():
    for name in ("train_steps", "train_seconds", "rows"):
        with pytest.raises(ValueError, match="neither a forward nor a backward pass"):
            Cost({name: 1.0})
    total = Cost({"train_forward": 2.0}, steps=10, seconds=1.5) + Cost({"train_forward": 1.0, "backward": 3.0}, 5, 0.5)
    assert total == Cost({"train_forward": 3.0, "backward": 3.0}, steps=15, seconds=2.0)
    assert total.prefixed("auditor").passes == {"auditor_train_forward": 3.0, "auditor_backward": 3.0}


def test_a_stored_cost_is_read_unit_by_unit_new_and_old_stores_alike():
    new = {"cost": {"passes": {"train_forward": 2.0, "train_backward": 2.0, "curvature_backward": 3.0},
                    "steps": 100, "seconds": 5.0}}
    assert run_cost(new) == (2.0, 5.0, 100.0, 5.0)
    # a store written before the cost was typed: one dict, units told apart by name; the old
    # "passes" column summed all of it (2 + 2 + 3 + 100 + 5 = 112)
    old = {"passes": {"train_forward": 2.0, "train_backward": 2.0, "curvature_backward": 3.0,
                      "train_steps": 100.0, "train_seconds": 5.0}}
    assert run_cost(old) == (2.0, 5.0, 100.0, 5.0)
    nothing = run_cost({"cost": Cost().as_dict()})
    assert all(math.isnan(v) for v in nothing) and all(math.isnan(v) for v in run_cost(None))


def test_each_unit_has_its_own_column():
    frame = pd.DataFrame({
        "method": ["dense", "fairalm"], "dense_key": ["d", "d"], "num_classes": [2, 2],
        "accuracy": [0.9, 0.8], "accuracy[g=0]": [0.9, 0.8], "accuracy[g=1]": [0.9, 0.8],
        "deo": [0.1, 0.05], "fpr_diff": [0.1, 0.05], "timings": [{}, {"apply_s": 7.0}],
        "info": [{}, {"cost": Cost({"train_forward": 4.0, "train_backward": 2.0}, steps=64, seconds=3.0).as_dict()}],
    })
    out = add_derived(frame).set_index("method")
    assert out.loc["fairalm", ["forward_passes", "backward_passes", "steps", "train_s", "apply_s"]].tolist() == [
        4.0, 2.0, 64.0, 3.0, 7.0]
    labels = {c.key: c.label for c in comparison_columns(out.columns, 2) if c.group == "cost"}
    assert labels == {"compression_ratio": "ratio", "serialized_bytes": "bytes", "latency_s": "latency s",
                      "apply_s": "method s", "forward_passes": "fwd passes", "backward_passes": "bwd passes",
                      "steps": "steps", "train_s": "train s"}
