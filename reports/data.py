"""What reports and the leaderboard read: the stored runs of a suite (or of every suite)
with their metrics and footprint, as plain data frames. Nothing here recomputes a model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from fairsqueeze.measure.groups import DEFAULT_RULE

from . import chance
from .palette import palette

# columns of a run record that are dicts/lists (kept as Python objects in the frames)
OBJECT_COLUMNS = ("sweep", "params", "flags", "info", "timings")
# footprint columns joined to each run (renamed where a run column has the same name)
FOOTPRINT_PREFIX = "footprint_"


@dataclass
class Results:
    """Stored results, read once. ``runs`` has one row per suite membership
    (see ``fairsqueeze.reports.results.suite_runs``); ``metrics`` and ``footprint`` are indexed by
    run key; ``predictions(run_key, split)`` reads per-example predictions on demand."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    footprint: pd.DataFrame
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    dense: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: Callable[[str, str], dict[str, np.ndarray]] | None = None
    # (run keys, split) -> {run key: predictions}, one bulk read; None: ``predictions`` per run
    predictions_many: Callable[[list, str], dict[str, dict[str, np.ndarray]]] | None = None
    split: str = "test"
    # tuning: the suite's studies (``fairsqueeze.reports.tuning_report.TunedStudy``) and the
    # selected configurations' results on ``split`` (``selected_results``)
    studies: list = field(default_factory=list)
    selected: pd.DataFrame = field(default_factory=pd.DataFrame)
    # every method stored in the database (method, family, method_order): the colours of
    # all pages of one store come from it; empty -> taken from ``runs``
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)
    # task key -> majority-class rates on ``split`` (``chance.majority_rates``); filled on first use
    majority: dict[str, dict] = field(default_factory=dict)
    # claims files read beside the packaged one and the plugins' (``--claims FILE``)
    claim_files: tuple = ()
    # tables derived from these results (``derived``), shared by the pages built from them
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    def derived(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``name`` while ``runs``, ``metrics`` and ``footprint`` are the
        frames it was computed from (a frame is returned as a shallow copy, so a caller that
        adds columns changes nothing for the next)."""
        key = (name, id(self.runs), id(self.metrics), id(self.footprint))
        if key not in self._derived:
            self._derived[key] = compute()
        value = self._derived[key]
        return value.copy(deep=False) if isinstance(value, pd.DataFrame) else value

    def colours(self) -> dict[str, str]:
        return palette(self.methods if not self.methods.empty else self.runs)

    def done(self) -> pd.DataFrame:
        """Finished runs, one row per membership, with their metrics and footprint joined
        (metric columns keep their registry keys)."""
        return self.derived("done", self._done)

    def _done(self) -> pd.DataFrame:
        done = self.runs[self.runs["status"] == "done"]
        fp = self.footprint.rename(columns={c: FOOTPRINT_PREFIX + c for c in self.footprint.columns if c in done})
        frame = done.join(self.metrics, on="run_key").join(fp, on="run_key")
        return chance.with_flag(frame.reset_index(drop=True), self.majority_rates())

    def majority_rates(self) -> dict[str, dict]:
        """Per task, the majority-class rates of ``split``, from the labels stored with one of
        its runs' predictions (every run of a task shares the split's labels and groups)."""
        done = self.runs[self.runs["status"] == "done"].drop_duplicates("task_key")
        for task_key, run_key in zip(done["task_key"], done["run_key"]):
            if task_key in self.majority or self.predictions is None:
                continue
            try:
                pred = self.predictions(run_key, self.split)
            except KeyError:
                continue
            self.majority[task_key] = chance.majority_rates(pred["y"], pred["s"])
        return self.majority

    def predictions_of(self, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """Stored predictions of ``keys`` on ``split`` (runs without any left out)."""
        if self.predictions_many is not None:
            return self.predictions_many(keys, self.split)
        found = {}
        for key in keys:
            try:
                found[key] = self.predictions(key, self.split)
            except (KeyError, TypeError):
                continue
        return found

    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"].reset_index(drop=True)


PREVIOUS_VERSION = r"@v\d+$"  # a suite redefined with --redefine keeps its old membership as NAME@vN


def protect_rule(info) -> str:
    """The rule that named a stored run's protected group (its info's ``protect.rule``; runs
    stored before the rule was recorded used the default)."""
    found = info.get("protect") if isinstance(info, dict) else None
    return found.get("rule", DEFAULT_RULE) if isinstance(found, dict) else DEFAULT_RULE


def current_definitions(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of the current definition of each suite (memberships of a previous version,
    ``NAME@vN``, left out) with each (task, model, seed, dense reference, method, params,
    protect rule) once: a run shared
    by two suites or entry labels, or the same configuration stored twice, counts once."""
    if frame.empty:
        return frame
    if "suite" in frame:
        frame = frame[~frame["suite"].astype(str).str.contains(PREVIOUS_VERSION, regex=True)]
    config = frame["params"].map(lambda p: json.dumps(p, sort_keys=True, default=str)) if "params" in frame else ""
    if "info" in frame:  # the same params protecting another group are another configuration
        config = config + "|" + frame["info"].map(protect_rule)
    keys = ["task_key", "model", "seed", "method"] + (["dense_key"] if "dense_key" in frame else [])
    unique = ~frame.assign(_config=config).duplicated(keys + ["_config"]) & ~frame.duplicated("run_key")
    return frame[unique]


def load(store, suite: str | None = None, split: str = "test") -> Results:
    """Read the runs of ``suite`` (every suite when None) from ``store``, and the suite's
    tuning studies (only for one suite: the leaderboard shows no studies)."""
    from fairsqueeze.store.reader import method_catalogue, suite_values

    from .results import suite_runs
    from .tuning_report import selected_results, tuned_studies

    return Results(
        runs=suite_runs(store, suite),
        metrics=suite_values(store, suite, split),
        footprint=suite_values(store, suite),
        tasks=store.task_summaries(),
        dense=store.dense_frame(),
        predictions=store.predictions,
        predictions_many=store.predictions_many,
        split=split,
        studies=tuned_studies(store, suite) if suite is not None else [],
        selected=selected_results(store, suite, split) if suite is not None else pd.DataFrame(),
        methods=method_catalogue(store),
    )
