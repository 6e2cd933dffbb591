"""The run's data model: a suite's task, model and method entries, the runs they expand to,
and the hashes that key each computation. Built by the suite parser, read by the engine."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from fairsqueeze.core.version import __version__
from fairsqueeze.core.hashing import config_hash
from fairsqueeze.spec.train import TrainConfig
from fairsqueeze.spec.tuning import TuneSpec


# A method entry's post-processing step -> the parity its per-group thresholds equalise
# (fairsqueeze.measure.thresholds)
POST_STEPS = {"equal_tpr_thresholds": "tpr", "equal_rate_thresholds": "rate"}

# The task option value that draws a task's split with each run's seed (``split_seed: per_seed``)
PER_SEED = "per_seed"


@dataclass(frozen=True)
class TaskEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @cached_property
    def key(self) -> str:
        return config_hash({"task": self.name, "options": self.options})

    @property
    def per_seed(self) -> bool:
        """Whether each seed draws its own split (the engine passes the run's seed as ``split_seed``)."""
        return self.options.get("split_seed") == PER_SEED

    def options_for(self, seed: int) -> dict[str, Any]:
        """The builder's options for a run of ``seed``: the entry's, with the seed as
        ``split_seed`` when the split is drawn per seed."""
        return {**self.options, "split_seed": seed} if self.per_seed else self.options

    def instance_key(self, seed: int) -> str:
        """Key of the loaded data a run of ``seed`` uses: one per entry, or one per (entry,
        seed) when the split is drawn per seed. The data fingerprint of each instance is part
        of every run key, so runs on different splits never share a key."""
        return config_hash({"task": self.key, "split_seed": seed}) if self.per_seed else self.key

    @property
    def label(self) -> str:
        return label_of(self.name, self.options)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    train: TrainConfig = field(default_factory=TrainConfig)
    tasks: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return label_of(self.name, self.options)


@dataclass(frozen=True)
class MethodEntry:
    """One method entry of a suite after sweep expansion; ``params`` are resolved (defaults
    filled in, numbers normalised), so equal computations get equal run keys."""

    name: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    label: str = ""
    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    entry: int = 0  # position of the entry in the suite file
    entry_label: str = ""  # the entry's label without sweep values
    sweep: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    tune: TuneSpec | None = field(default=None, compare=False)  # tuned on validation instead of fixed params
    seed: int | None = None  # the method's seed when it is not the run's (a selected trial's seed)
    protect: str | None = None  # the protected group's rule (fairsqueeze.measure.groups); None: the default
    post: str | None = None  # per-group thresholds on the method's model (POST_STEPS), chosen on validation


@dataclass(frozen=True)
class RunSpec:
    """One planned run. Its keys exist once it is bound to the data its task loaded."""

    task: TaskEntry
    model: ModelEntry
    method: MethodEntry
    seed: int
    data: str = ""  # the task's data fingerprint (split rows and content), set by bind()

    def bind(self, fingerprint: str) -> "RunSpec":
        return replace(self, data=fingerprint)

    @property
    def task_instance(self) -> str:
        """Key of the loaded task this run uses (see :meth:`TaskEntry.instance_key`)."""
        return self.task.instance_key(self.seed)

    @property
    def task_options(self) -> dict[str, Any]:
        """The options the task is built with for this run."""
        return self.task.options_for(self.seed)

    @property
    def dense_key(self) -> str:
        """Hash of what determines the dense reference (shared by every method): the task
        and its options, the data actually loaded, the model, the training config, the seed."""
        if not self.data:
            raise RuntimeError("RunSpec.dense_key needs the task's data fingerprint (bind() first)")
        return config_hash(
            {
                "task": self.task.key,
                "data": self.data,
                "model": {"name": self.model.name, "options": self.model.options},
                "train": self.model.train.identity(),
                "seed": self.seed,
            }
        )

    @property
    def method_seed(self) -> int:
        """The seed the method runs with: the run's, or the seed of the trial it reproduces."""
        return self.seed if self.method.seed is None else self.method.seed

    @property
    def key(self) -> str:
        """Hash of everything that determines this run's result (never its suite or label)."""
        ident = {"dense": self.dense_key, "method": self.method.name, "params": self.method.params,
                 "version": __version__}
        if self.method.seed is not None:
            ident["method_seed"] = self.method.seed
        if self.method.protect is not None:  # absent by default, so earlier keys stay valid
            ident["protect"] = self.method.protect
        if self.method.post is not None:
            ident["post"] = self.method.post
        return config_hash(ident)


def label_of(name: str, options: dict[str, Any]) -> str:
    if not options:
        return name
    inner = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{name}({inner})"


@dataclass
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...]
    tasks: list[TaskEntry]
    models: list[ModelEntry]
    methods: list[MethodEntry]
    source: str = "<memory>"
    needs_gpu: bool = False  # refuses a CPU-only start unless --device cpu is explicit

    def runs(self) -> list[RunSpec]:
        """The fixed runs: every (task, model, method, seed) the entries' restrictions allow."""
        return [r for r in self._matrix() if r.method.tune is None]

    def studies(self) -> list[RunSpec]:
        """The tuned entries' (task, model, entry, seed): one Optuna study each, the seeds of
        an entry side by side. A study's trials run one after another, and the studies of one
        entry cost about the same, so workers taking them in turn finish together instead of
        leaving the last entry's studies (perhaps the longest) to one worker."""
        tuned = [r for r in self._matrix() if r.method.tune is not None]
        position = {id(x): i for group in (self.tasks, self.models, self.methods) for i, x in enumerate(group)}
        return sorted(tuned, key=lambda r: (position[id(r.task)], position[id(r.model)], position[id(r.method)]))

    def _matrix(self) -> list[RunSpec]:
        plan = []
        for task in self.tasks:
            for model in self.models:
                if model.tasks is not None and task.name not in model.tasks:
                    continue
                for seed in self.seeds:
                    for method in self.methods:
                        if method.models is not None and model.name not in method.models:
                            continue
                        if method.tasks is not None and task.name not in method.tasks:
                            continue
                        plan.append(RunSpec(task, model, method, seed))
        return plan
