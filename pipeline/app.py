"""The `mlpl` typer application object, on which every command module registers its commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mlpl",
    help="Multi-label classification from scarce labels with cached vision-language pseudo-labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
