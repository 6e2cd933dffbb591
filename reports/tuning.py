"""The report's tuning section: per (task, model), the budgets each tuned entry had, the
studies' trials and Pareto fronts on validation, and the configurations the named policies
selected with their results on the report's split. Read from ``Results`` alone."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pandas as pd

from fairsqueeze.store.studies import short_params

from . import figures
from .data import Results

DIRECTION = {"maximize": "max", "minimize": "min"}


@dataclass
class TuningSection:
    task: str
    model: str
    anchor: str
    entries: list[dict]  # one budget row per tuned entry
    unequal: str | None  # the note shown when the entries' budgets differ
    figure: str
    studies: list  # TunedStudy, by entry then seed
    columns: list[str]  # the columns of the selected results: objectives, then compression ratio
    selected: list[dict]  # one row per (entry, policy)


def _entry(label: str, studies: list) -> dict:
    first = studies[0]
    attrs = first.attrs
    sampler = attrs.get("sampler", {})
    options = short_params(sampler.get("options") or {})
    within = attrs.get("accuracy_within")
    return {
        "label": label,
        "method": attrs["method"],
        "seeds": sorted(int(s.attrs["seed"]) for s in studies),
        "budget": first.budget,
        "complete": sum(len(s.trials) for s in studies),
        "planned": sum(s.budget for s in studies),
        "sampler": f"{sampler.get('name')} (seed {sampler.get('seed')}{', ' + options if options else ''})",
        "objectives": ", ".join(f"{DIRECTION[d]} {n}" for n, d in zip(first.objectives, first.directions)),
        "constraint": "none" if within is None else f"val accuracy ≥ {(1 - within) * 100:g} % of the dense model's",
        "policies": list(attrs.get("policies", [])),
    }


def _unequal(entries: list[dict]) -> str | None:
    budgets = {e["budget"] for e in entries}
    if len(budgets) < 2:
        return None
    each = ", ".join(f"{e['label']} {e['budget']}" for e in entries)
    return (f"Unequal budgets: the entries had different numbers of trials per study ({each}); the suite allowed it"
            " (tuning.unequal_budgets). A larger budget can find a better front by itself: compare with care.")


def _selected_rows(selected: pd.DataFrame, studies: list, columns: list[str]) -> list[dict]:
    """The selected results of one (task, model), each with the validation trial every seed's
    study chose for it."""
    trials = {}
    for s in studies:
        for policy, number in s.selected.items():
            trials.setdefault(f"{s.attrs['label']}[{policy}]", []).append((int(s.attrs["seed"]), number))
    by_label = {s.attrs["label"]: s.attrs["method"] for s in studies}
    rows = []
    for _, r in selected.iterrows():
        entry = r["label"][: -len(r["policy"]) - 2]  # "entry[policy]"
        rows.append({
            "label": r["label"], "method": by_label.get(entry), "policy": r["policy"],
            "trials": int(r["trials"]), "seeds": int(r["seeds"]), "runs": r["runs"],
            "chosen": sorted(trials.get(r["label"], []), key=lambda t: t[0]),
            "values": {c: (r.get(c, math.nan), r.get(f"{c}_ci", math.nan)) for c in columns},
        })
    return rows


def tuning_sections(results: Results, colours: dict[str, str]) -> list[TuningSection]:
    """One section per (task, model) that has tuning studies; none for a suite without tuning."""
    groups: dict[tuple[str, str], list] = {}
    for study in sorted(results.studies, key=lambda s: (s.attrs["label"], int(s.attrs["seed"]))):
        groups.setdefault((study.attrs["task_key"], study.attrs["model"]), []).append(study)
    sections = []
    for (task_key, model), studies in sorted(groups.items(), key=lambda kv: (kv[1][0].attrs["task"], kv[0][1])):
        by_entry: dict[str, list] = {}
        for s in studies:
            by_entry.setdefault(s.attrs["label"], []).append(s)
        entries = [_entry(label, mine) for label, mine in by_entry.items()]
        columns = [*studies[0].objectives[:2], "compression_ratio"]
        chosen = results.selected
        if not chosen.empty:
            chosen = chosen[(chosen["task_key"] == task_key) & (chosen["model"] == model)]
        sections.append(TuningSection(
            task=studies[0].attrs["task"],
            model=model,
            anchor="tune-" + hashlib.sha1(f"{task_key}|{model}".encode()).hexdigest()[:12],
            entries=entries,
            unequal=_unequal(entries),
            figure=figures.tuning_plot(studies, colours),
            studies=studies,
            columns=columns,
            selected=_selected_rows(chosen, studies, columns),
        ))
    return sections
