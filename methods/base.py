"""The plugin contract: a method turns a copy of the dense model into an outcome.

A method never evaluates itself and never sees the test split: the engine does both, the
same way for every method. See CONTRIBUTING.md for a complete one-file example.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.params import check_types, normalize_params
from fairsqueeze.core.registry import METHODS
from fairsqueeze.measure.groups import DEFAULT_RULE, worse_group
from fairsqueeze.datasets.base import Split, TaskData, TaskView

def register_method(name: str):
    """Class decorator: make a :class:`Method` subclass available under ``name``."""
    return METHODS.register(name)


@dataclass
class Predictions:
    """Per-example labels, predictions and groups on one split."""

    y: np.ndarray
    y_pred: np.ndarray
    s: np.ndarray


@dataclass
class Cost:
    """What a method spent, in three units that are never added together: passes over data by
    name (in units of the split it ran over; each name ends in ``forward`` or ``backward``),
    optimizer steps, and seconds of training."""

    passes: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        for name in self.passes:
            if not name.endswith(("forward", "backward")):
                raise ValueError(f"cost: pass {name!r} is neither a forward nor a backward pass"
                                 " (steps and seconds have their own fields)")

    def __add__(self, other: "Cost") -> "Cost":
        passes = dict(self.passes)
        for name, value in other.passes.items():
            passes[name] = passes.get(name, 0.0) + float(value)
        return Cost(passes, self.steps + other.steps, self.seconds + other.seconds)

    def prefixed(self, prefix: str) -> "Cost":
        """The same cost with every pass named ``{prefix}_{name}`` (whose passes they were)."""
        return Cost({f"{prefix}_{k}": v for k, v in self.passes.items()}, self.steps, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        """What the store keeps under the run's ``info["cost"]``."""
        return {"passes": dict(self.passes), "steps": int(self.steps), "seconds": float(self.seconds)}


@dataclass
class Outcome:
    """What a method returns.

    ``sparse_storage`` names parameters stored as their nonzeros only (zeroed entries count
    as removed in the footprint); every other parameter is stored dense, zeros included.
    ``cost`` is what the method spent: passes, optimizer steps and seconds, kept apart.
    """

    model: nn.Module
    sparse_storage: tuple[str, ...] = ()
    cost: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know of a task when a suite is planned, before anything trains."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    groups: tuple[int, ...]  # the sensitive groups (codes >= 0) of the training split

    @property
    def images(self) -> bool:
        """Whether the inputs are images (channels, height, width)."""
        return len(self.input_shape) == 3

    @classmethod
    def of(cls, task: TaskData | TaskView) -> "TaskInfo":
        groups = tuple(sorted(int(g) for g in np.unique(task.train.s) if g >= 0))
        return cls(task.name, int(task.num_classes), tuple(task.input_shape), groups)


def two_groups(task: TaskInfo, coded_0_1: bool = False, unprivileged_group: int | None = None) -> str | None:
    """Why a method that compares two sensitive groups cannot run on ``task`` (None: it can):
    a task with more or fewer groups, other codes than 0 and 1 where the method needs them, or
    a chosen unprivileged group the task does not have."""
    if len(task.groups) != 2 or (coded_0_1 and task.groups != (0, 1)):
        return f"needs two sensitive groups{' coded 0 and 1' if coded_0_1 else ''}, the task has {list(task.groups)}"
    if unprivileged_group is not None and unprivileged_group not in task.groups:
        return f"unprivileged_group {unprivileged_group} is not a group of this task ({list(task.groups)})"
    return None


@dataclass
class MethodContext:
    """Everything a method may use. ``model`` is a private copy of the dense reference."""

    model: nn.Module
    task: TaskView
    device: torch.device
    seed: int
    dense_val: Predictions
    generator: torch.Generator
    protect: str = DEFAULT_RULE  # the rule that names the protected group (fairsqueeze.measure.groups)

    def unprivileged_group(self) -> int:
        """The group the dense model serves worse on validation by the ``protect`` rule (c = 0
        in the papers): lower accuracy by default, lower TPR for equal-opportunity claims."""
        p = self.dense_val
        return worse_group(p.y, p.y_pred, p.s, self.protect, self.task.num_classes)

    def scoring_sets(self, size: int | None = None) -> dict[int, Split]:
        """Balanced per-group samples of the training split (groups with s >= 0).

        Each group gets n = min(size, smallest group size) rows, drawn with the run's seed.
        """
        train = self.task.train
        groups = sorted(int(g) for g in np.unique(train.s) if g >= 0)
        rows = {g: np.flatnonzero(train.s == g) for g in groups}
        n = min(len(r) for r in rows.values())
        if size is not None:
            n = min(n, int(size))
        rng = np.random.default_rng(self.seed)
        return {g: train.subset(np.sort(rng.choice(r, n, replace=False))) for g, r in rows.items()}

    def batches(self, split: Split, batch_size: int = 256, train: bool = False):
        """Yield (x, y, s) tensors on the device, in order, with eval-time transforms by default."""
        for start in range(0, len(split), batch_size):
            rows = slice(start, start + batch_size)
            x = self.task.prepare(split.x[rows], train).to(self.device)
            yield x, torch.as_tensor(split.y[rows], device=self.device), torch.as_tensor(split.s[rows])

    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Every metric of ``model`` on the validation split, computed as the engine scores a
        trial (:func:`fairsqueeze.measure.evaluate.split_metrics`: its one prediction loop, then the metrics)."""
        from fairsqueeze.measure.evaluate import split_metrics

        return split_metrics(model, self.task.val, self.task.prepare, self.device, self.task.num_classes)

    def labelled_batches(self, split: Split, batch_size: int = 256) -> "LabelledBatches":
        """A split's ``(x, y)`` batches with eval transforms, iterable once per pass (what
        curvature and saliency estimators loop over)."""
        return LabelledBatches(self, split, batch_size)


@dataclasses.dataclass(frozen=True)
class LabelledBatches:
    ctx: MethodContext
    split: Split
    batch_size: int

    def __iter__(self):
        for x, y, _ in self.ctx.batches(self.split, self.batch_size):
            yield x, y


def parse_beta(value: float | str) -> float:
    """β of the group-curvature scores, ½θ²(h⁰ − β·h¹) and its kin, written as a number or as
    a fraction the way the papers write it ("5/9"). β weighs the privileged group's curvature
    against the unprivileged group's: a negative β would reward removing what the privileged
    group needs, so it is refused."""
    try:
        beta = float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"beta must be a number or a fraction like '5/9', got {value!r}") from None
    if not beta >= 0:
        raise ConfigError(f"beta must be >= 0, got {value!r}")
    return beta


def checked_beta(method: str, value: float | str) -> float:
    """:func:`parse_beta` for a method's ``validate``: the error names the method."""
    try:
        return parse_beta(value)
    except ConfigError as exc:
        raise ConfigError(f"{method}: {exc}") from None


class Method(abc.ABC):
    """Base class of every method plugin.

    Subclasses define ``Params`` (a dataclass whose defaults are the paper's setting),
    ``apply``, and optionally ``space`` (an Optuna define-by-run search space).
    """

    registered_name: ClassVar[str]
    family: ClassVar[str] = "other"
    # params that fit the conformance check's tiny model (an MLP 64 -> fc1 32 -> fc2 16 -> fc3)
    # and keep its run to seconds: what `fairsqueeze check-plugin NAME` uses without --params
    conformance_params: ClassVar[dict[str, Any]] = {}

    @dataclass
    class Params:
        pass

    def __init__(self, params: "Method.Params | None" = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, where: str = "params") -> "Method":
        config = dict(config or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown parameter {unknown[0]!r} for method {cls.registered_name!r}"
                f" (known: {', '.join(fields) or 'none'})"
            )
        check_types(config, cls.Params, where)
        try:
            method = cls(normalize_params(cls.Params(**config)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        method.validate()
        return method

    def param_dict(self) -> dict[str, Any]:
        """The resolved parameters (defaults filled in, numbers normalised): what a run key hashes."""
        return dataclasses.asdict(self.params)

    def validate(self) -> None:
        """Raise ConfigError for invalid parameters; called when a suite is loaded."""

    def supports(self, task: TaskInfo) -> str | None:
        """Why the method cannot run on ``task`` (binary labels only, images only, two groups
        only, ...), or None when it can; asked when a suite is planned, before anything trains."""
        return None

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when the parameters do not fit ``model`` (a layer that does not
        exist, a rank above the layer's); called on the untrained model before anything trains."""

    @abc.abstractmethod
    def apply(self, ctx: MethodContext) -> Outcome:
        """Compress or train ``ctx.model`` and return the outcome."""

    def space(self, trial) -> dict[str, Any]:
        """An Optuna define-by-run search space: the params this method searches, by name, and
        only those (the engine merges them into the entry's params). A method that does not
        override it has no search space, and a suite that tunes it is refused when loaded."""
        raise ConfigError(f"method {self.registered_name!r} has no search space")

    @classmethod
    def searches(cls) -> bool:
        """Whether the method has a search space (overrides :meth:`space`)."""
        return cls.space is not Method.space
