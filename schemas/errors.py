"""The one exception type for bad user input (files, rows, options), mapped to exit code 2 by the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input from the user: the message names the file, row or option and what was expected."""


def check_range(name: str, value: float, *, gt: float | None = None, ge: float | None = None,
                le: float | None = None) -> None:
    """Raise `InputError` naming setting `name` (and its `--option`) when `value` is outside the range.

    Configs call this from `__post_init__`, so a value from a preset file and one from the command line are
    checked alike, before any work and any write.
    """
    bounds = [f"> {gt:g}" if gt is not None else "", f"≥ {ge:g}" if ge is not None else "",
              f"≤ {le:g}" if le is not None else ""]
    ok = ((gt is None or value > gt) and (ge is None or value >= ge) and (le is None or value <= le)
          and value == value)  # NaN is never in range
    if not ok:
        option = "--" + name.replace("_", "-")
        expected = " and ".join(b for b in bounds if b)
        raise InputError(f"{name} ({option}): {value!r} is out of range; expected {expected}")


@contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Give an `OSError` raised inside the block `path` as its file name when it has none (a write to an open
    file that fails for a full disk names no file), so the message the user sees says where."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
