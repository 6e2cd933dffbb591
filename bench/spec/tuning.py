"""Tuning: Optuna multi-objective studies on the validation split, and named selection policies.

A suite entry with ``tune:`` instead of fixed params gets one study per (suite, task, model,
entry, seed). Each trial asks the method's define-by-run ``space(trial)`` for its params,
applies the method to a copy of the dense reference and scores the outcome on **validation**
only: a utility metric (maximised), an unfairness metric (minimised) and optionally the
compression ratio (maximised). A constraint such as "validation accuracy within x of the
dense model" is set with ``trial.set_constraint``, so constraint-aware samplers and Optuna's
Pareto front (``study.best_trials``) both honour it.

A selection policy is a small pure function of the table of finished trials that returns the
chosen trial number. Only that configuration is then evaluated on test, as an ordinary run.
Flagged trials (the engine's flags on validation: degenerate, i.e. constant predictions, or
no effect, i.e. the dense model's predictions) and infeasible ones are never selected: a
model that predicts one class has zero gaps and is not "fair".

The studies live in the engine's database (Optuna's RDB storage on the same URL), so
``optuna-dashboard <url>`` shows them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from fairsqueeze.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna

# -- objectives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objectives:
    """What a study optimises, all measured on validation."""

    utility: str = "f1_avg"  # maximised
    unfairness: str = "eodd"  # minimised
    compression: bool = False  # also maximise the compression ratio

    def names(self) -> list[str]:
        return [self.utility, self.unfairness] + (["compression_ratio"] if self.compression else [])

    def directions(self) -> list[str]:
        return ["maximize", "minimize"] + (["maximize"] if self.compression else [])

    def validate(self) -> None:
        from fairsqueeze.measure.metrics import metric_def

        for role, name, better in (("utility", self.utility, True), ("unfairness", self.unfairness, False)):
            try:
                definition = metric_def(name)
            except KeyError:
                raise ConfigError(f"objectives.{role}: unknown metric {name!r}") from None
            if definition.higher_is_better is not better:
                want = "higher" if better else "lower"
                raise ConfigError(f"objectives.{role}: {name!r} is not a metric where {want} is better")

    def values(self, metrics: dict[str, float], compression_ratio: float) -> list[float]:
        out = [metrics[self.utility], metrics[self.unfairness]]
        return out + ([compression_ratio] if self.compression else [])


# -- selection policies -------------------------------------------------------------------------
# Each takes a frame with one row per finished trial: columns ``number``, ``utility``,
# ``unfairness``, ``feasible``, ``flagged`` (and ``compression`` when it is an objective),
# and returns the selected trial number, or None when no trial qualifies.


def candidates(trials: pd.DataFrame) -> pd.DataFrame:
    """Feasible, unflagged trials with finite objective values. A flagged trial is degenerate
    (constant predictions on validation, overall or in one group) or had no effect
    (predictions equal to the dense model's): its gaps measure nothing, so it is never chosen."""
    ok = trials["feasible"].astype(bool) & ~trials["flagged"].astype(bool)
    ok &= np.isfinite(trials["utility"].astype(float)) & np.isfinite(trials["unfairness"].astype(float))
    return trials[ok]


def _first(frame: pd.DataFrame, by: list[str], ascending: list[bool]) -> int | None:
    if frame.empty:
        return None
    return int(frame.sort_values(by + ["number"], ascending=ascending + [True], kind="stable").iloc[0]["number"])


def best_utility(trials: pd.DataFrame) -> int | None:
    """Highest utility; ties go to the lower unfairness, then the earlier trial."""
    return _first(candidates(trials), ["utility", "unfairness"], [False, True])


def fairest_within(trials: pd.DataFrame, tolerance: float) -> int | None:
    """Lowest unfairness among trials whose utility is at least (1 − tolerance) x the best utility.

    FairALM's and MEDFAIR's procedure (FairALM: within 90 % of the best accuracy, tolerance 0.1);
    the tolerance is relative. Ties go to the higher utility, then the earlier trial.
    """
    pool = candidates(trials)
    if pool.empty:
        return None
    pool = pool[pool["utility"] >= (1 - tolerance) * pool["utility"].max()]
    return _first(pool, ["unfairness", "utility"], [True, False])


def fairest_above(trials: pd.DataFrame, floor: float) -> int | None:
    """Lowest unfairness among trials whose utility is at least ``floor`` (an absolute value)."""
    pool = candidates(trials)
    return _first(pool[pool["utility"] >= floor], ["unfairness", "utility"], [True, False])


def utopia(trials: pd.DataFrame) -> int | None:
    """Closest (Euclidean) to the utopia point after min-max scaling every objective over the
    candidates to [0, 1] with 1 the best value seen; an objective with no spread scores 1."""
    pool = candidates(trials)
    if pool.empty:
        return None
    axes = {"utility": True, "unfairness": False}
    if "compression" in pool:
        axes["compression"] = True
    distance = np.zeros(len(pool))
    for column, higher_is_better in axes.items():
        v = pool[column].astype(float).to_numpy()
        spread = v.max() - v.min()
        scaled = np.ones_like(v) if spread == 0 else ((v - v.min()) if higher_is_better else (v.max() - v)) / spread
        distance += (1 - scaled) ** 2
    return _first(pool.assign(distance=np.sqrt(distance)), ["distance"], [True])


POLICIES: dict[str, Callable[..., int | None]] = {
    "best_utility": best_utility,
    "fairest_within": fairest_within,
    "fairest_above": fairest_above,
    "utopia": utopia,
}
POLICY_ARGUMENT = {"fairest_within": "tolerance", "fairest_above": "floor"}


@dataclass(frozen=True)
class Policy:
    """A named policy and its one argument (``fairest_within`` and ``fairest_above`` need one)."""

    name: str
    argument: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.argument is None else f"{self.name}({self.argument:g})"

    def select(self, trials: pd.DataFrame) -> int | None:
        function = POLICIES[self.name]
        return function(trials) if self.argument is None else function(trials, self.argument)

    @classmethod
    def parse(cls, raw: Any) -> "Policy":
        """``best_utility`` / ``utopia`` or a one-key mapping ``{fairest_within: 0.05}``."""
        if isinstance(raw, dict) and len(raw) == 1:
            (name, argument), = raw.items()
        else:
            name, argument = raw, None
        if name not in POLICIES:
            raise ConfigError(f"unknown selection policy {name!r} (known: {', '.join(POLICIES)})")
        if (argument is None) != (name not in POLICY_ARGUMENT):
            need = f"{{{name}: <{POLICY_ARGUMENT[name]}>}}" if name in POLICY_ARGUMENT else name
            raise ConfigError(f"policy {name!r}: write it as {need}")
        if argument is not None:
            if isinstance(argument, bool) or not isinstance(argument, (int, float)) or not math.isfinite(argument):
                raise ConfigError(f"policy {name!r}: expected a number, got {argument!r}")
            if name == "fairest_within" and not 0 <= argument < 1:
                raise ConfigError("policy 'fairest_within': the tolerance must lie in [0, 1)")
            argument = float(argument)
        return cls(str(name), argument)


# -- samplers ---------------------------------------------------------------------------------

# by class name in optuna.samplers: Optuna is imported when a sampler is built, not when a suite is read
SAMPLERS: dict[str, str] = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "random": "RandomSampler"}

# Options the engine sets unless a suite names them. A study's trials never run at the same
# time (one worker holds a study), so TPE's constant liar (on by default since Optuna 5) finds
# no other running trial and samples the same values; without it TPE reads the study's trials
# once per trial instead of once per suggested parameter.
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"constant_liar": False}}


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name, its seed and extra constructor options (e.g. NSGA-II's population_size)."""

    name: str = "tpe"
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, seed: int | None = None) -> "optuna.samplers.BaseSampler":
        import optuna

        return getattr(optuna.samplers, SAMPLERS[self.name])(seed=self.seed if seed is None else seed, **self.effective_options())

    def effective_options(self) -> dict[str, Any]:
        """The constructor options: the engine's defaults, then the suite's."""
        return {**SAMPLER_DEFAULTS.get(self.name, {}), **dict(self.options)}

    def validate(self) -> None:
        if self.name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.name!r} (known: {', '.join(SAMPLERS)})")
        try:
            self.build()
        except TypeError as exc:
            raise ConfigError(f"sampler {self.name!r}: {exc}") from None


# -- the tuning spec of a suite entry -------------------------------------------------------------


@dataclass(frozen=True)
class TuneSpec:
    """How one suite entry is tuned (the suite's ``tuning:`` block merged with the entry's ``tune:``)."""

    trials: int
    objectives: Objectives = field(default_factory=Objectives)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    policies: tuple[Policy, ...] = (Policy("best_utility"),)
    accuracy_within: float | None = None  # constraint: val accuracy >= (1 - x) x dense val accuracy

    def identity(self) -> dict[str, Any]:
        """What determines the study's trials (policies do not: they only read the trials)."""
        return {
            "objectives": [self.objectives.names(), self.objectives.directions()],
            "sampler": [self.sampler.name, self.sampler.seed, list(self.sampler.options)],
            "accuracy_within": self.accuracy_within,
        }


TUNING_KEYS = {"trials", "objectives", "sampler", "policies", "constraints", "unequal_budgets"}
ENTRY_TUNE_KEYS = {"trials"}


MAX_TRIALS = 100_000  # a sane maximum per study: the papers' searches use tens


def parse_tuning(block: dict[str, Any] | None, entry: dict[str, Any] | bool) -> TuneSpec:
    """The suite's ``tuning:`` block and an entry's ``tune:`` value into a :class:`TuneSpec`.

    Raises ConfigError with a message relative to the block it names.
    """
    block = dict(block or {})
    unknown = sorted(set(block) - TUNING_KEYS)
    if unknown:
        raise ConfigError(f"tuning.{unknown[0]}: unknown key (allowed: {', '.join(sorted(TUNING_KEYS))})")
    entry = {} if entry is True else entry
    if not isinstance(entry, dict):
        raise ConfigError("tune: expected true or a mapping like {trials: 20}")
    unknown = sorted(set(entry) - ENTRY_TUNE_KEYS)
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}: unknown key (allowed: {', '.join(sorted(ENTRY_TUNE_KEYS))})")
    trials = entry.get("trials", block.get("trials"))
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError("tune.trials: expected a positive integer (here or in the suite's tuning block)")
    if trials > MAX_TRIALS:
        raise ConfigError(f"tune.trials: {trials} is more than {MAX_TRIALS:,} trials, more than a study here could"
                          " finish")

    raw = block.get("objectives") or {}
    if not isinstance(raw, dict) or set(raw) - {"utility", "unfairness", "compression"}:
        raise ConfigError("tuning.objectives: expected a mapping with utility, unfairness and optionally compression")
    objectives = Objectives(**raw)
    objectives.validate()

    raw = block.get("sampler", "tpe")
    raw = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or set(raw) - {"name", "seed", "options"}:
        raise ConfigError("tuning.sampler: expected a name or {name, seed, options}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2 ** 32 - 1:
        raise ConfigError(f"tuning.sampler.seed: expected an integer in 0..{2 ** 32 - 1}, got {seed!r}")
    sampler = SamplerSpec(str(raw.get("name", "tpe")), seed, tuple(sorted((raw.get("options") or {}).items())))
    sampler.validate()

    raw = block.get("policies", ["best_utility"])
    if not isinstance(raw, list) or not raw:
        raise ConfigError("tuning.policies: expected a non-empty list")
    policies = tuple(Policy.parse(p) for p in raw)
    if len({p.label for p in policies}) != len(policies):
        raise ConfigError("tuning.policies: a policy is listed twice")

    constraints = block.get("constraints") or {}
    if not isinstance(constraints, dict) or set(constraints) - {"accuracy_within"}:
        raise ConfigError("tuning.constraints: the only constraint is accuracy_within: <fraction>")
    within = constraints.get("accuracy_within")
    if within is not None and (isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 <= within < 1):
        raise ConfigError("tuning.constraints.accuracy_within: expected a fraction in [0, 1)")
    return TuneSpec(trials, objectives, sampler, policies, None if within is None else float(within))
