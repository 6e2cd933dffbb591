"""A small name -> object registry with decorator registration and entry-point discovery."""
from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects.

    ``entry_point_group`` names the ``importlib.metadata`` group from which third-party
    packages contribute entries; they are loaded the first time the registry is read.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

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

    def _load_entry_points(self) -> None:
        from .registry_loader import load_plugins

        load_plugins()  # the built-ins register when imported: asking any registry imports them first
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()  # importing the module runs its @register decorators
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                first = str(exc).splitlines()[0] if str(exc) else ""
                logging.getLogger("fairsqueeze").warning(
                    "%s plugin %r (%s) failed to import and is skipped: %s: %s",
                    self.kind, ep.name, ep.value, type(exc).__name__, first,
                )

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._items))
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} (known: {known})")
        return self._items[name]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def position(self, name: str) -> int:
        """Registration order of ``name`` (built-ins first, in their modules' order): a stable
        order for colours and listings."""
        self._load_entry_points()
        return list(self._items).index(name)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
