"""Registries of frozen `*Info` entries (losses, pseudo-labellers, datasets, ...), their decorator, one type checker."""

from __future__ import annotations

import difflib
import fnmatch
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from mlpl.schemas.errors import InputError


class HasName(Protocol):
    name: str


InfoT = TypeVar("InfoT", bound=HasName)
ObjT = TypeVar("ObjT")


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


def register_with(registry: Registry[InfoT], info_cls: Callable[..., InfoT],
                  attribute: str) -> Callable[..., Callable[[ObjT], ObjT]]:
    """A registration decorator for a registry (timm's `@register_model` habit).

    `register = register_with(LOSSES, LossInfo, "fn")` gives `@register(name="an", description=..., ...)`:
    on a function or class, it registers `LossInfo(fn=<it>, name="an", ...)` (a duplicate name is an error)
    and returns it unchanged, so one function may carry several registrations.
    """

    def register(**fields: Any) -> Callable[[ObjT], ObjT]:
        def decorate(obj: ObjT) -> ObjT:
            registry.register(info_cls(**fields, **{attribute: obj}))
            return obj

        return decorate

    return register


def check_type(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to `hint` (int → float, list → tuple) or an `InputError` naming `where`."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        raise InputError(f"{where} must be one of {list(allowed)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is type(None) and value is None:
                return None
            if arm is not type(None):
                try:
                    return check_type(value, arm, where)
                except InputError:
                    continue
        raise InputError(f"{where} must be {hint}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise InputError(f"{where} must have {len(args)} entries, got {list(value)!r}")
        return tuple(check_type(v, a, where) for v, a in zip(value, args))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(f"{where} must be a number, got {value!r}")
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise InputError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if hint in (int, bool, str) and type(value) is not hint:
        raise InputError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
