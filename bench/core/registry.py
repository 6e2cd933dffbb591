"""Name -> object registries, a leaf of the package: filled by the plugins that register into
them, never importing a plugin themselves.

The built-in plugin packages and the installed entry points are imported once, by the entry
points of the program (the command line, :mod:`fairsqueeze.testing`, a job process's start):
see :func:`fairsqueeze.cli.plugins.load_plugins`."""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from fairsqueeze.core.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects.

    ``entry_point_group`` names the ``importlib.metadata`` group from which third-party
    packages contribute entries (read by the plugin loader, not here).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            if isinstance(obj, type) or callable(obj):
                try:
                    obj.registered_name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._items)) or "none: call fairsqueeze.load_plugins() first"
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} (known: {known})")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def position(self, name: str) -> int:
        """Registration order of ``name`` (built-ins first, in their modules' order): a stable
        order for colours and listings."""
        return list(self._items).index(name)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @contextlib.contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the length of a ``with`` block (a test's plugin,
        which may replace a registered one), then restore the registry as it was."""
        with self.restored():
            self._items.pop(name, None)
            self.register(name)(obj)
            yield obj

    @contextlib.contextmanager
    def restored(self) -> Iterator["Registry[T]"]:
        """Undo, when the block ends, every registration made inside it (order included)."""
        before = dict(self._items)
        try:
            yield self
        finally:
            self._items.clear()
            self._items.update(before)

    def modules(self) -> list[str]:
        """The modules whose registrations fill this registry (what a spawned process re-imports)."""
        return list(dict.fromkeys(getattr(obj, "__module__", None) or getattr(getattr(obj, "builder", None), "__module__", "")
                                  for obj in self._items.values()))


# The three plugin kinds. Entry-point groups let other packages contribute to them.
TASKS: Registry[Any] = Registry("task", entry_point_group="fairsqueeze.tasks")
MODELS: Registry[Any] = Registry("model", entry_point_group="fairsqueeze.models")
METHODS: Registry[Any] = Registry("method", entry_point_group="fairsqueeze.methods")
REGISTRIES = (TASKS, MODELS, METHODS)


def registered_modules() -> list[str]:
    """Every module that registered a plugin, in registration order."""
    return list(dict.fromkeys(m for registry in REGISTRIES for m in registry.modules() if m))


def method_class(name: str):
    return METHODS.get(name)


def create_method(name: str, params: dict[str, Any] | None, where: str = "params"):
    """The method ``name`` with ``params`` checked and resolved (as ``create_model`` for models).
    Raises ConfigError naming the key, FairsqueezeError for an unknown name."""
    return method_class(name).from_config(params, where=where)


def method_identity(name: str) -> dict[str, Any]:
    """What the reading side shows about a method without importing it: its family and its
    registration position (the colour order)."""
    return {"family": method_class(name).family, "method_order": METHODS.position(name)}
