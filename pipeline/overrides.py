"""`--set KEY=VALUE` and `--grid KEY=V1,V2` overrides of a run's resolved configuration, parsed and checked.

Keys are the names a run's `config.toml` uses: a top-level training setting (`lr`, `pseudo_mode`) or
`section.key` of a part's typed config (`pseudo_params.delta_neg`, `loss_params.q3`). Values are TOML
(`0.3`, `true`, `[1, 2]`); anything else is taken as a string. A value's type is checked where the
configuration is resolved (against `TrainCfg` or the part's typed config), before any run folder is written.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

from mlpl.schemas.errors import InputError

PARAM_SECTIONS = ("loss_params", "pseudo_params", "label_state_params", "head_params")
"""Tables of `config.toml` whose keys `--set section.key=value` reaches (checked against the part's typed config)."""


def parse_value(text: str) -> Any:
    """A TOML scalar or list (`0.3`, `true`, `[1, 2]`, `"x"`), else the text itself as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise InputError(f"{option} {text!r}: expected KEY=VALUE" + (",VALUE..." if option == "--grid" else ""))
    return key.strip(), value.strip()


def check_key(key: str, option: str) -> None:
    """A `--set`/`--grid` key is a top-level training setting or `section.key` of a part's typed config."""
    from mlpl.config import PRESET_KEYS

    section, dot, name = key.partition(".")
    if dot and section in PARAM_SECTIONS and name and "." not in name:
        return
    if not dot and key in PRESET_KEYS:
        return
    import difflib

    known = sorted(PRESET_KEYS - set(PARAM_SECTIONS)) + [f"{s}.KEY" for s in PARAM_SECTIONS]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"{option}: unknown key {key!r}. Known keys: {known}{hint}")


def nest(settings: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """`[("pseudo_params.tau", 1.0), ("lr", 1e-3)]` → `{"pseudo_params": {"tau": 1.0}, "lr": 1e-3}`."""
    out: dict[str, Any] = {}
    for key, value in settings:
        section, dot, name = key.partition(".")
        if dot:
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def parse_sets(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, value = parse_assignment(item, "--set")
        check_key(key, "--set")
        out.append((key, parse_value(value)))
    return out


def parse_grids(items: list[str]) -> list[tuple[str, list[Any]]]:
    out: list[tuple[str, list[Any]]] = []
    for item in items:
        key, values = parse_assignment(item, "--grid")
        check_key(key, "--grid")
        if key in {k for k, _ in out}:
            raise InputError(f"--grid: key {key!r} given twice; list all its values in one --grid {key}=V1,V2")
        parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if len({repr(v) for v in parsed}) != len(parsed):
            raise InputError(f"--grid {item!r}: a value is repeated")
        out.append((key, parsed))
    return out
