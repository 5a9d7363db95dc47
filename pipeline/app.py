"""The `mlpl` typer application object and the entry point that maps bad input to exit code 2."""

from __future__ import annotations

import logging
import sys

import typer
from mlpl.schemas.errors import InputError

app = typer.Typer(
    name="mlpl",
    help="Multi-label classification from scarce labels with cached vision-language pseudo-labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: an `InputError` becomes a one-line message and exit code 2."""
    import mlpl.cli  # noqa: F401  (registers every command on `app`)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
