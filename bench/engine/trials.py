"""A tuning trial's identity and record: the seed it runs with (stable across processes and
retries) and what it stores on the trial for selection and the pages."""
from __future__ import annotations

import hashlib
import math
from typing import Any

import optuna

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.registry import create_method


def derived_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across processes and machines)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def retried_number(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the trial a waiting retry replaces (itself when it is not a retry).

    Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues the retry of a stale trial with the
    original number in its ``failed_trial`` system attribute; seeding from it makes the retry
    compute the same thing as the attempt that died."""
    return trial.system_attrs.get("failed_trial", trial.number)


def trial_seed(study_name: str, origin: int) -> int:
    """The seed a trial's method runs with: from the study and the (original) trial number."""
    return derived_seed(study_name, origin)


def suggested_params(method: str, entry_params: dict[str, Any], trial) -> dict[str, Any]:
    """A trial's params: the entry's, with those the method's ``space(trial)`` searched put in
    their place (checked and resolved like a suite's)."""
    searched = create_method(method, entry_params).space(trial)
    if not isinstance(searched, dict):
        raise ConfigError(f"method {method!r}: space(trial) must return a dict of the params it searched,"
                          f" got {type(searched).__name__}")
    return create_method(method, {**entry_params, **searched}, where="space(trial)").param_dict()


# -- recording a trial ------------------------------------------------------------------------


def record(trial: optuna.trial.Trial, result, params: dict[str, Any], seed: int) -> None:
    """Store what selection and reports need on the trial itself (visible in the dashboard): the
    constraint and one ``result`` record holding the resolved params, seed, flags, compression
    ratio, timings and validation metrics. Each attribute write is a database round trip, so
    there are two."""
    if result.accuracy_slack is not None:
        trial.set_constraint("accuracy_within", float(result.accuracy_slack))
    trial.set_user_attr("result", {
        "params": params,
        "seed": seed,
        "flags": list(result.flags),
        "compression_ratio": float(result.compression_ratio),
        "seconds": result.seconds,
        "val": {k: (float(v) if math.isfinite(v) else None) for k, v in result.metrics.items()},
    })
