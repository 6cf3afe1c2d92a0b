"""Choose parts by name, the way timm picks models: a dict of name -> factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A named table of factories; unknown names fail with the list of known ones."""

    def __init__(self, kind: str, declared: Sequence[str] | None = None) -> None:
        """``declared``: the names a torch-free module lists so they can be checked without importing this one;
        registering any other name fails, and tests check that each declared name is registered."""
        self.kind = kind
        self.declared = None if declared is None else tuple(declared)
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.declared is not None and name not in self.declared:
                raise ValueError(
                    f"{self.kind} {name!r} is not among the declared names {list(self.declared)}: add it there too"
                )
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the factory, rejecting keyword arguments it does not take (so typos in configs surface)."""
        fn = self.get(name)
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} got unknown option(s) {unknown}; it takes {sorted(params)}")
        return fn(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
