"""The `mlpl` command line: registers every command module on `mlpl.app.app`; bad input becomes exit code 2."""

from __future__ import annotations

import logging
import sys

from mlpl.app import app
from mlpl.commands import demo, deploy, methods, precompute, prepare, report, train  # noqa: F401  (each registers its commands)
from mlpl.schemas.errors import InputError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: an `InputError` becomes a one-line message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
