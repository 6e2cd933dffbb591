"""The plugin contract: a method turns a copy of the dense model into an outcome.

A method never evaluates itself and never sees the test split: the engine does both, the
same way for every method. See CONTRIBUTING.md for a complete one-file example.
"""
from __future__ import annotations

import abc
import collections.abc
import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fairsqueeze.errors import ConfigError
from fairsqueeze.registry import Registry
from fairsqueeze.tasks import Split, TaskView

METHODS: Registry[type["Method"]] = Registry("method", entry_point_group="fairsqueeze.methods")


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
class Outcome:
    """What a method returns.

    ``sparse_storage`` names parameters stored as their nonzeros only (zeroed entries count
    as removed in the footprint); every other parameter is stored dense, zeros included.
    ``passes`` counts the forward/backward passes over data the method spent, by name.
    """

    model: nn.Module
    sparse_storage: tuple[str, ...] = ()
    passes: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodContext:
    """Everything a method may use. ``model`` is a private copy of the dense reference."""

    model: nn.Module
    task: TaskView
    device: torch.device
    seed: int
    dense_val: Predictions
    generator: torch.Generator

    def unprivileged_group(self) -> int:
        """The group on which the dense model is less accurate on validation (c = 0 in the papers)."""
        p = self.dense_val
        accuracy = {int(g): float((p.y[p.s == g] == p.y_pred[p.s == g]).mean()) for g in np.unique(p.s[p.s >= 0])}
        return min(accuracy, key=accuracy.get)

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
        trial (:func:`fairsqueeze.evaluate.split_metrics`: its one prediction loop, then the metrics)."""
        from fairsqueeze.evaluate import split_metrics

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


def _accepts_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(origin, getattr(origin, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value from a suite file (YAML or JSON) is of the annotated type. A bool is
    never an int or a float, a float is never an int, NaN is no number, and a float-typed
    value may be a fraction string such as "5/9" (as the papers write beta)."""
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True  # unannotated or unresolvable: nothing to check against
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if origin is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if origin is int:
        return isinstance(value, numbers.Integral)
    if origin is float:
        if isinstance(value, str):
            try:
                Fraction(value.strip())
            except (ValueError, ZeroDivisionError):
                return False
            return True
        return isinstance(value, numbers.Real) and not math.isnan(value)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))  # YAML and JSON give lists for tuple fields
    if isinstance(origin, type):
        return isinstance(value, origin)
    return True


def check_types(values: dict[str, Any], annotated: Any, where: str = "") -> None:
    """Raise ConfigError naming the first value that does not fit the annotation of its name
    on ``annotated`` (a dataclass such as a method's ``Params``, or a function's keyword
    arguments): ``k: 4.5`` for an int, ``lr: nan`` or ``lr: fast`` for a float,
    ``structured: "no"`` for a bool. Names without an annotation are not checked."""
    try:
        hints = typing.get_type_hints(annotated)
    except Exception:  # a plugin's annotations that cannot be resolved: leave them unchecked
        return
    for key, value in values.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            fraction = " or a fraction like '5/9'" if _accepts_float(hint) and isinstance(value, str) else ""
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}{key}: expected {_type_name(hint)}{fraction}, got {value!r}")


def normalize_params(params: Any) -> Any:
    """Give every number of a float-typed parameter one form, so one setting has one run key.

    An int becomes a float (``0`` and ``0.0``) and a fraction string becomes its float value
    (``"5/9"`` and ``0.5555555555555556``, as the papers write β). Other values are kept.
    """
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if not _accepts_float(hints.get(f.name)) or isinstance(value, bool):
            continue
        if isinstance(value, int):
            setattr(params, f.name, float(value))
        elif isinstance(value, str):
            try:
                setattr(params, f.name, float(Fraction(value.strip())))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"{f.name}: expected a number or a fraction like '5/9', got {value!r}") from None
    return params


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
    needs: ClassVar[tuple[str, ...]] = ("dense",)

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

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when the parameters do not fit ``model`` (a layer that does not
        exist, a rank above the layer's); called on the untrained model before anything trains."""

    @abc.abstractmethod
    def apply(self, ctx: MethodContext) -> Outcome:
        """Compress or train ``ctx.model`` and return the outcome."""

    def space(self, trial) -> "Method.Params":
        """The default search space is the paper's setting only; plugins override this."""
        return self.Params()
