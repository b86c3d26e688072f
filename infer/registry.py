"""One small registry for models, losses, datasets, runtimes and export formats.

A duplicate name raises; an unknown name raises listing the valid ones and the closest match.
The module is torch-free so that the deploy runtime (`infer/`) can use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> builder mapping.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(**kw): ...
        >>> MODELS.get("tiny")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is already registered ({self._items[key]!r})")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise a KeyError naming the valid ones."""
        if name not in self._items:
            valid = sorted(self._items)
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(valid)}")
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the entry called ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        """The entries in registration order."""
        return list(self._items.values())

    def remove(self, name: str) -> T:
        """Unregister ``name`` (a plugin or a test that registered it for a while)."""
        self.get(name)
        return self._items.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
