"""A small registry of frozen `*Info` entries, one per family (losses, pseudo-labellers, datasets, ...)."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from mlpl.schemas.errors import InputError

HYPERPARAMETER_DATASETS: tuple[str, ...] = ("voc", "coco", "nus", "cub", "digits")
"""Dataset families with their own hyperparameters (VOC 2007 and 2012 share `voc`)."""


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


def build_cfg(
    cfg_cls: type,
    what: str,
    dataset_defaults: Mapping[str, Mapping[str, Any]],
    dataset: str | None,
    overrides: Mapping[str, Any],
) -> Any:
    """Merge class defaults, per-dataset defaults and overrides into a frozen `cfg_cls`, checking every key.

    Shared by every registry whose entries have a typed config (losses, pseudo-labellers, label states,
    heads). Values are checked against the field's annotation (int is accepted for float, a list for a
    tuple); `cfg_cls.__post_init__` checks ranges.

    Raises:
        InputError: unknown dataset family, unknown key, wrong type, or a per-dataset field left unset.
    """
    values: dict[str, Any] = {}
    if dataset is not None:
        if dataset not in HYPERPARAMETER_DATASETS:
            raise InputError(f"{what}: unknown dataset family {dataset!r} for hyperparameters. "
                             f"Available: {list(HYPERPARAMETER_DATASETS)}")
        values.update(dataset_defaults.get(dataset, {}))
    values.update(overrides)
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{what}: unknown option(s) {unknown}. Available: {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"{what}: {missing} have no default without a dataset; pass a dataset family "
                         f"({list(HYPERPARAMETER_DATASETS)}) or set them")
    checked = {key: _check_type(value, hints[key], f"{what}: option {key!r}") for key, value in values.items()}
    try:
        return cfg_cls(**checked)
    except InputError as error:  # a range check in __post_init__: say whose option it is
        raise InputError(f"{what}: {error}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
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
                    return _check_type(value, arm, where)
                except InputError:
                    continue
        raise InputError(f"{where} must be {hint}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise InputError(f"{where} must have {len(args)} entries, got {list(value)!r}")
        return tuple(_check_type(v, a, where) for v, a in zip(value, args))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(f"{where} must be a number, got {value!r}")
    if hint in (int, bool, str) and type(value) is not hint:
        raise InputError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value
