"""`mlpl backbones`: the backbone families and the `--backbone` values each accepts."""

from __future__ import annotations

from typing import Annotated

import typer
from mlpl.app import app


@app.command("backbones")
def backbones(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on model names, e.g. 'convnext_*'.")] = "*",
    family: Annotated[str | None, typer.Option(help="One family: torchvision, mlpl, timm, open_clip.")] = None,
) -> None:
    """List backbone families and their models, as `--backbone` takes them."""
    from mlpl.stages.train.backbones import BACKBONE_FAMILIES, list_backbones

    for info in BACKBONE_FAMILIES:
        if family in (None, info.name):
            form = f"{info.name}:MODEL" if info.prefixed else "MODEL"
            typer.echo(f"# {info.name} ({form}): {info.description} [{info.reference}]")
    for name in list_backbones(family, pattern):
        typer.echo(name)
