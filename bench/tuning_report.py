"""What tuning produced, read back from the database: studies, Pareto fronts, selected results."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
from scipy import stats
from sqlalchemy import select

from .store import Store
from .tuning import pareto_front, trial_params
from .worker import selections, work_meta


def studies(url: str, suite: str | None = None) -> list[optuna.study.StudySummary]:
    """The tuning studies in the database (optionally of one suite), by name."""
    found = optuna.get_all_study_summaries(storage=url, include_best_trial=False)
    if suite is not None:
        found = [s for s in found if s.user_attrs.get("suite") == suite]
    return sorted(found, key=lambda s: s.study_name)


def front_table(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front of one study: trial number, objective values on validation, params."""
    names = study.user_attrs.get("objectives", [f"objective{i}" for i in range(len(study.directions))])
    rows = [
        {"trial": t.number, **dict(zip(names, t.values)), "params": trial_params(t)}
        for t in pareto_front(study)
    ]
    return pd.DataFrame(rows, columns=["trial", *names, "params"])


def selections_frame(store: Store, suite: str | None = None) -> pd.DataFrame:
    work_meta.create_all(store.engine)
    query = select(selections)
    if suite is not None:
        query = query.where(selections.c.suite == suite)
    with store.engine.connect() as conn:
        return pd.read_sql(query, conn)


def mean_ci(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (NaN below two values)."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def selected_results(store: Store, suite: str | None = None, split: str = "test") -> pd.DataFrame:
    """Per (task, model, entry, policy): the selected runs' metrics over seeds, mean ± 95 % CI.

    The columns are the study's own objectives (utility, unfairness) and the compression ratio,
    with the trial budget each entry had.
    """
    chosen = selections_frame(store, suite)
    chosen = chosen[chosen["run_key"].notna()]
    runs = store.runs_frame(status="done", keys=chosen["run_key"].unique())
    if chosen.empty or runs.empty:
        return pd.DataFrame()
    chosen = chosen.merge(runs[["key", "task_label", "model"]], left_on="run_key", right_on="key")
    metrics = store.metrics_frame(split, keys=chosen["run_key"].unique())
    wide = metrics.pivot_table(index="run_key", columns="name", values="value")
    fp = store.footprint_frame(keys=chosen["run_key"].unique())
    ratio = fp[fp["name"] == "compression_ratio"].set_index("run_key")["value"]
    rows = []
    for (task, model, label, policy), group in chosen.groupby(["task_label", "model", "label", "policy"], sort=True):
        objectives = optuna.load_study(study_name=group["study"].iloc[0], storage=store.url).user_attrs["objectives"]
        keys = list(group["run_key"])  # one per seed
        row = {"task": task, "model": model, "label": label, "policy": policy,
               "trials": int(group["trials"].iloc[0]), "seeds": len(keys)}
        for name, values in ((objectives[0], wide.get(objectives[0])), (objectives[1], wide.get(objectives[1])),
                             ("compression_ratio", ratio)):
            mean, half = mean_ci(values.reindex(keys) if values is not None else pd.Series(dtype=float))
            row[name] = f"{mean:.3f} ± {half:.3f}" if not np.isnan(half) else f"{mean:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def format_fronts(store: Store, suite: str | None = None) -> str:
    """Every study's sampler, budget and Pareto front, then what each policy selected."""
    lines = []
    chosen = selections_frame(store, suite)
    for summary in studies(store.url, suite):
        study = optuna.load_study(study_name=summary.study_name, storage=store.url)
        attrs = study.user_attrs
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        sampler = attrs.get("sampler", {})
        lines.append(
            f"\n== {summary.study_name} ==\nsampler {sampler.get('name')} (seed {sampler.get('seed')}),"
            f" {complete}/{attrs.get('trials')} trials complete, objectives on validation:"
            f" max {attrs['objectives'][0]}, min {attrs['objectives'][1]}"
            + (", max compression_ratio" if len(attrs["objectives"]) > 2 else "")
            + (f", constraint: accuracy within {attrs['accuracy_within']:g} of dense" if attrs.get("accuracy_within") is not None else "")
        )
        front = front_table(study)
        lines.append("Pareto front:" if not front.empty else "Pareto front: (no feasible complete trial yet)")
        if not front.empty:
            front["params"] = front["params"].map(lambda p: json.dumps(p, sort_keys=True))
            lines.append(front.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        mine = chosen[chosen["study"] == summary.study_name]
        for _, row in mine.iterrows():
            picked = f"trial {int(row['trial'])}" if pd.notna(row["trial"]) else "no qualifying trial"
            lines.append(f"selected by {row['policy']}: {picked} -> {row['label']}")
    table = selected_results(store, suite)
    if not table.empty:
        lines.append("\n== selected configurations on test (mean ± 95 % CI over seeds) ==")
        with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60):
            lines.append(table.to_string(index=False))
    return "\n".join(lines).strip() or "no tuning studies"
