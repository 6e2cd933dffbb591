"""What tuning produced, read back from the database: studies, Pareto fronts, selected results.

Reading never writes: Optuna creates its tables and stamps its schema version whenever it
opens a database, so a database without Optuna's tables is not handed to Optuna at all (it
holds no study), and a database without the ``selections`` table holds no selection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from fairsqueeze.store.reader import Store, reading_storage, selections_frame
from fairsqueeze.store.studies import pareto_front, short_params, trials_frame

from .stats import estimate

def studies(store: Store, suite: str | None = None) -> list[optuna.study.StudySummary]:
    """The tuning studies in the database (optionally of one suite), by name."""
    storage = reading_storage(store)
    if storage is None:
        return []
    found = optuna.get_all_study_summaries(storage=storage, include_best_trial=False)
    if suite is not None:
        found = [s for s in found if s.user_attrs.get("suite") == suite]
    return sorted(found, key=lambda s: s.study_name)


def front_table(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front of one study: trial number, objective values on validation, flags and
    the searched params (the entry's fixed params are the same for every trial).

    A constant (degenerate) or unchanged (no-effect) model can sit on Optuna's front, e.g. with
    zero unfairness; ``flags`` names it, and no policy ever selects it."""
    names = study.user_attrs.get("objectives", [f"objective{i}" for i in range(len(study.directions))])
    rows = [
        {"trial": t.number, **dict(zip(names, t.values)),
         "flags": ", ".join(t.user_attrs.get("result", {}).get("flags", [])), "params": t.params}
        for t in pareto_front(study)
    ]
    return pd.DataFrame(rows, columns=["trial", *names, "flags", "params"])


@dataclass
class TunedStudy:
    """One study read back: its settings (the user attributes the worker stored), its complete
    trials (``fairsqueeze.store.studies.trials_frame``), Optuna's Pareto front and what each policy chose."""

    name: str
    attrs: dict[str, Any]
    directions: list[str]  # "maximize" / "minimize", one per objective
    trials: pd.DataFrame
    front: pd.DataFrame  # front_table: Optuna's best_trials (feasible ones when constrained)
    selected: dict[str, int | None]  # policy label -> chosen trial (None: no trial qualified)
    failed: int = 0  # failed attempts (each retried in its slot; none counts against the budget)

    @property
    def objectives(self) -> list[str]:
        return list(self.attrs["objectives"])

    @property
    def budget(self) -> int:
        return int(self.attrs["trials"])


def tuned_studies(store: Store, suite: str | None = None) -> list[TunedStudy]:
    """Every study of ``suite`` (all suites when None) with its trials, front and selections."""
    storage = reading_storage(store)
    if storage is None:
        return []
    chosen = selections_frame(store, suite)
    out = []
    for summary in studies(store, suite):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        mine = chosen[chosen["study"] == summary.study_name]
        out.append(TunedStudy(
            name=summary.study_name,
            attrs=dict(study.user_attrs),
            directions=[d.name.lower() for d in study.directions],
            trials=trials_frame(study),
            front=front_table(study),
            selected={p: (int(t) if pd.notna(t) else None) for p, t in zip(mine["policy"], mine["trial"])},
            failed=len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))),
        ))
    return out


def selected_results(store: Store, suite: str | None = None, split: str = "test") -> pd.DataFrame:
    """Per (task, model, entry, policy): the selected runs' metrics over seeds, mean ± 95 % CI.

    One row per policy of a tuned entry: ``task``, ``task_key``, ``model``, ``label`` (the
    selected runs' label, ``entry[policy]``), ``policy``, ``trials`` (the budget), ``seeds`` and ``runs`` ([(seed, run key)]),
    then for the study's objectives (utility, unfairness) and the compression ratio the mean
    in a column of that name and the CI half-width in ``<name>_ci`` (NaN for one seed).
    """
    chosen = selections_frame(store, suite)
    chosen = chosen[chosen["run_key"].notna()]
    runs = store.runs_frame(status="done", keys=chosen["run_key"].unique())
    if chosen.empty or runs.empty:
        return pd.DataFrame()
    chosen = chosen.merge(runs[["key", "task_key", "task_label", "model", "seed"]], left_on="run_key", right_on="key")
    objectives = {s.study_name: s.user_attrs["objectives"] for s in studies(store, suite)}
    metrics = store.metrics_frame(split, keys=chosen["run_key"].unique())
    wide = metrics.pivot_table(index="run_key", columns="name", values="value")
    fp = store.footprint_frame(keys=chosen["run_key"].unique())
    ratio = fp[fp["name"] == "compression_ratio"].set_index("run_key")["value"]
    rows = []
    groups = chosen.sort_values("seed").groupby(["task_label", "task_key", "model", "label", "policy"], sort=True)
    for (task, task_key, model, label, policy), group in groups:
        utility, unfairness = objectives[group["study"].iloc[0]][:2]
        keys = list(group["run_key"])  # one per seed
        row = {"task": task, "task_key": task_key, "model": model, "label": label, "policy": policy,
               "trials": int(group["trials"].iloc[0]), "seeds": len(keys),
               "runs": list(zip(group["seed"].astype(int), keys))}
        for name, values in ((utility, wide.get(utility)), (unfairness, wide.get(unfairness)),
                             ("compression_ratio", ratio)):
            est = estimate(values.reindex(keys) if values is not None else [])
            row[name], row[f"{name}_ci"] = est.mean, est.half_width
        rows.append(row)
    return pd.DataFrame(rows)


def _with_ci(mean: float, half: float) -> str:
    return f"{mean:.3f} ± {half:.3f}" if not np.isnan(half) else f"{mean:.3f}"


def format_fronts(store: Store, suite: str | None = None) -> str:
    """Every study's sampler, budget and Pareto front, then what each policy selected."""
    lines = []
    for study in tuned_studies(store, suite):
        attrs, objectives = study.attrs, study.objectives
        sampler = attrs.get("sampler", {})
        lines.append(
            f"\n== {study.name} ==\nsampler {sampler.get('name')} (seed {sampler.get('seed')}),"
            f" {len(study.trials)}/{study.budget} trials complete"
            + (f" ({study.failed} failed attempt(s), retried)" if study.failed else "")
            + ", objectives on validation:"
            f" max {objectives[0]}, min {objectives[1]}"
            + (", max compression_ratio" if len(objectives) > 2 else "")
            + (f", constraint: accuracy within {attrs['accuracy_within']:g} of dense" if attrs.get("accuracy_within") is not None else "")
        )
        front = study.front.copy()
        lines.append("Pareto front:" if not front.empty else "Pareto front: (no feasible complete trial yet)")
        if not front.empty:
            front["params"] = front["params"].map(short_params)
            lines.append(front.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for policy, trial in sorted(study.selected.items()):
            picked = f"trial {trial}" if trial is not None else "no qualifying trial"
            lines.append(f"selected by {policy}: {picked} -> {attrs['label']}[{policy}]")
    table = selected_results(store, suite)
    if not table.empty:
        lines.append("\n== selected configurations on test (mean ± 95 % CI over seeds) ==")
        shown = table[["task", "model", "label", "policy", "trials", "seeds"]].copy()
        for name in [c for c in table.columns if f"{c}_ci" in table.columns]:
            shown[name] = [_with_ci(m, h) for m, h in zip(table[name], table[f"{name}_ci"])]
        with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60):
            lines.append(shown.to_string(index=False))
    return "\n".join(lines).strip() or "no tuning studies"
