"""Reading finished Optuna studies back: the trials table the selection policies take, Optuna's
Pareto set and the short form of params. A leaf module (Optuna and pandas only), so the
pages read studies without importing the side that runs them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # the pages import short_params without loading Optuna
    import optuna


def trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A finished trial's resolved method params (the searched ones and the fixed rest)."""
    return trial.user_attrs.get("result", {}).get("params", trial.params)


def short_params(params: dict[str, Any]) -> str:
    """``k=v`` pairs in name order, floats to 4 significant digits: params or options on one short line."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per complete trial: the policies' input, plus params and timings."""
    rows = []
    compression = len(study.directions) == 3
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = {
            "number": t.number,
            "utility": t.values[0],
            "unfairness": t.values[1],
            "feasible": all(v <= 0 for v in t.constraints.values()),
            "flagged": bool(t.user_attrs.get("result", {}).get("flags")),
            "params": trial_params(t),
        }
        if compression:
            row["compression"] = t.values[2]
        rows.append(row)
    columns = ["number", "utility", "unfairness", "feasible", "flagged", "params"] + (["compression"] if compression else [])
    return pd.DataFrame(rows, columns=columns)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Optuna's own Pareto set (feasible trials only when the study is constrained)."""
    return sorted(study.best_trials, key=lambda t: t.number)
