"""Checks of the values a suite gives a plugin: the option names a builder accepts and the
annotated types of a method's params, each failure one line naming the key."""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import numbers
import types
import typing
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from fairsqueeze.core.errors import ConfigError


def check_options(func: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Raise ConfigError naming the first option that ``func`` does not accept."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
    for key in options:
        if key not in known:
            raise ConfigError(f"{what}: unknown option {key!r} (known: {', '.join(known)})")


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


INT_LIMIT = 2 ** 63  # an integer a tensor, NumPy or a database column can hold: |value| below it


def finite_number(value: Any) -> float | None:
    """The float a number or a fraction string stands for, None when it has none or it is not
    finite (NaN, infinities, and strings such as '1e400' that overflow a float)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return number if math.isfinite(number) else None


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
        return isinstance(value, numbers.Integral) and -INT_LIMIT < value < INT_LIMIT
    if origin is float:
        return isinstance(value, (str, numbers.Real)) and finite_number(value) is not None
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
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}{key}: expected {_expected(hint, value)}, got {value!r}")


def _expected(hint: Any, value: Any) -> str:
    """What a value that does not fit ``hint`` should have been, said for the kind of mistake."""
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if _accepts_float(hint) and (number or isinstance(value, str) and _is_fraction(value)):
        return "a finite number"
    if number and isinstance(value, numbers.Integral) and _fits(0, hint):
        return f"{_type_name(hint)} of magnitude below 2**63"
    fraction = " or a fraction like '5/9'" if _accepts_float(hint) and isinstance(value, str) else ""
    return f"{_type_name(hint)}{fraction}"


def _is_fraction(text: str) -> bool:
    try:
        Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return False
    return True


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
            number = finite_number(value)
            if number is None:
                expected = "a finite number" if _is_fraction(value) else "a number or a fraction like '5/9'"
                raise ConfigError(f"{f.name}: expected {expected}, got {value!r}")
            setattr(params, f.name, number)
    return params
