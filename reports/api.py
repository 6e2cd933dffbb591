"""Stored results from Python, as the pages read them: ``fairsqueeze.open_results(url)``.

    import fairsqueeze
    res = fairsqueeze.open_results("sqlite:///results/fairsqueeze.db")
    runs = res.runs("default")                    # one row per suite membership
    tidy = res.metrics("default")                 # one row per run, group and metric
    delta = res.paired("default")                 # per-seed change against dense
    pairs = res.pairs("fairlrf-vs-truncated-svd", "default")  # the pairs behind a verdict

Every frame is read from the store alone (nothing is recomputed from a model) and the
database is opened read-only. Runs carry the flags the pages use, the reading side's
``near_chance`` included.
"""
from __future__ import annotations


import pandas as pd

from fairsqueeze.measure.metrics import GROUP_KEY
from fairsqueeze.core.errors import FairsqueezeError
from fairsqueeze.store.reader import open_store

from .columns import add_derived
from .data import Results, load

# columns that say which run a value belongs to, in the order the tidy frames show them
IDENTITY = ["suite", "task_key", "task_label", "task", "target", "sensitive", "num_classes", "model", "label",
            "entry_label", "method", "family", "params", "sweep", "seed", "run_key", "flags"]
OVERALL = "all"  # the group of a value over the whole split


class ResultsReader:
    """Read-only access to one results database; each method returns a new DataFrame."""

    def __init__(self, url: str, split: str = "test", claims: tuple = ()):
        self.store = open_store(url)
        self.split = split
        self.claims = tuple(claims)
        self._loaded: dict[str | None, Results] = {}

    def results(self, suite: str | None = None) -> Results:
        """The :class:`Results` the pages render (read once per suite)."""
        if suite not in self._loaded:
            self._loaded[suite] = load(self.store, suite, self.split)
            self._loaded[suite].claim_files = self.claims
        return self._loaded[suite]

    def _done(self, suite: str | None) -> pd.DataFrame:
        done = self.results(suite).done()
        return add_derived(done) if not done.empty else done

    def runs(self, suite: str | None = None) -> pd.DataFrame:
        """One row per suite membership (every suite when None) with the run's identity,
        params, status, error, flags, info and timings; a finished run's flags include the
        reading side's ``near_chance``."""
        runs = self.results(suite).runs.copy()
        done = self.results(suite).done()
        if not done.empty:
            flags = dict(zip(zip(done["suite"], done["label"], done["seed"], done["run_key"]), done["flags"]))
            runs["flags"] = [flags.get(k, f) for k, f in
                             zip(zip(runs["suite"], runs["label"], runs["seed"], runs["run_key"]), runs["flags"])]
        return runs

    def metrics(self, suite: str | None = None, tidy: bool = True) -> pd.DataFrame:
        """Finished runs' metrics on the split. ``tidy``: one row per (run, group, metric)
        with ``metric``, ``group`` (``"all"`` or the group id) and ``value`` beside the
        run's identity; else one row per run with a column per stored metric, footprint
        value and derived column (as the comparison tables see them)."""
        done = self._done(suite)
        if not tidy or done.empty:
            return done
        values = [c for c in self.results(suite).metrics.columns if c in done]
        long = done[[c for c in IDENTITY if c in done] + values].melt(
            id_vars=[c for c in IDENTITY if c in done], value_vars=values, var_name="key", value_name="value")
        split = long["key"].str.extract(GROUP_KEY)
        long["metric"] = split[0].fillna(long["key"])
        long["group"] = split[1].map(lambda g: int(g) if isinstance(g, str) else OVERALL)
        return long.drop(columns="key").dropna(subset=["value"]).reset_index(drop=True)

    def paired(self, suite: str) -> pd.DataFrame:
        """Per seed, each finished run's metrics against the dense run of the same task,
        model and seed: ``value``, ``dense`` and ``delta = value - dense`` (tidy, one row per
        run, group and metric; the dense runs themselves left out). Differences only: the
        intervals and tests over seeds are the statistics module's."""
        tidy = self.metrics(suite)
        if tidy.empty:
            return tidy
        done = self._done(suite)
        dense_key = dict(zip(done["run_key"], done["dense_key"]))
        dense = tidy[tidy["method"] == "dense"].drop_duplicates(["run_key", "metric", "group"])
        dense = dense.assign(dense_key=dense["run_key"].map(dense_key))[["dense_key", "metric", "group", "value"]]
        out = tidy[tidy["method"] != "dense"].assign(dense_key=lambda f: f["run_key"].map(dense_key))
        out = out.merge(dense.rename(columns={"value": "dense"}), on=["dense_key", "metric", "group"], how="inner")
        return out.assign(delta=out["value"] - out["dense"]).drop(columns="dense_key").reset_index(drop=True)

    def against_dense(self, suite: str | None = None) -> pd.DataFrame:
        """Per finished run, what it did to each group against the dense model of the same
        seed, from stored predictions: worst-group accuracy, ``accuracy_change[g=G]`` and
        ``flip_rate[g=G]`` (:mod:`fairsqueeze.reports.against_dense`)."""
        from .against_dense import against_dense_table

        return against_dense_table(self.results(suite))

    def pairs(self, claim: str, suite: str | None = None) -> pd.DataFrame:
        """The pairs behind one verdict row (``claim``: the row's id, or the claim's id when
        it has one row): cell, configuration, seed, the fair and twin values and their run
        keys, idle pairs included and marked (``idle``). Every suite when ``suite`` is None."""
        from . import verdicts

        try:
            return verdicts.pairs_for(self.results(suite), claim)
        except KeyError as err:
            raise FairsqueezeError(err.args[0]) from None

    def verdicts(self, suite: str) -> pd.DataFrame:
        """The suite's verdict table, from the verdicts module of the statistics side."""
        try:
            from . import verdicts
        except ImportError:
            raise FairsqueezeError("verdicts need fairsqueeze.reports.verdicts, which this install lacks") from None
        return verdicts.verdict_table(self.results(suite))


def open_results(url: str, split: str = "test", claims=()) -> ResultsReader:
    """Open a results database (any SQLAlchemy URL) to read; nothing is ever written.
    ``claims``: claims files read beside the packaged claims and those installed plugins ship."""
    return ResultsReader(url, split, claims)
