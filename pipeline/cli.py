"""The `mlpl` command line: registers every command module on `mlpl.app.app`; bad input exits 2, a failing
environment 1 (mlpl.errors)."""

from __future__ import annotations

import logging

from mlpl.app import app
from mlpl.commands import (  # noqa: F401  (each registers its commands)
    backbones,
    demo,
    deploy,
    methods,
    precompute,
    prepare,
    report,
    sweep,
    train,
)
from mlpl.errors import reported_failures

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: bad input exits 2, a failing environment (disk, permissions) 1, each with
    a one-line message (mlpl.errors)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with reported_failures():
        app(args=argv, standalone_mode=True)


if __name__ == "__main__":
    main()
