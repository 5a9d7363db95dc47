"""A small registry of frozen `*Info` entries, one per family (losses, pseudo-labellers, datasets, ...)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from schemas.errors import InputError


class HasName(Protocol):
    name: str


InfoT = TypeVar("InfoT", bound=HasName)


class Registry(Generic[InfoT]):
    """Name → Info. A duplicate name is an error; an unknown name lists the known ones."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, InfoT] = {}

    def register(self, info: InfoT) -> InfoT:
        if info.name in self._entries:
            raise ValueError(f"{self.family} {info.name!r} is already registered")
        self._entries[info.name] = info
        return info

    def get(self, name: str, option: str | None = None) -> InfoT:
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, self._entries, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"{option}: " if option else ""
        raise InputError(f"{where}unknown {self.family} {name!r}. Available: {sorted(self._entries)}{hint}")

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[InfoT]:
        return iter(self._entries[n] for n in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
