"""The `mlpl` command line: every command module registers itself on `mlpl.app.app`."""

from __future__ import annotations

from mlpl.app import app, main
from mlpl.commands import demo, methods, precompute, prepare, report, train  # noqa: F401

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
