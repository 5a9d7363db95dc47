"""`mlpl report`: finished runs → the mean ± std table of the papers' Table 1 and their figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mlpl.app import app


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs (searched below).")],
    group_by: Annotated[str, typer.Option(
        help="Row keys, comma-separated: method, regime, seed, or any config.toml key (pseudo_params.delta_neg); "
             "datasets are the columns.")] = "method",
    metrics: Annotated[str, typer.Option(
        help="Comma-separated: map, cf1, of1, macro_f1, hamming, pseudo_precision, pseudo_recall, ...")] = "map",
    fmt: Annotated[str, typer.Option("--format", help="md, csv, latex or json.")] = "md",
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    plots: Annotated[Path | None, typer.Option(help="Folder for the figures (PNG and SVG).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table to this file.")] = None,
) -> None:
    """Mean ± std over seeds of every group of runs (methods as rows, datasets as columns), with run counts."""
    from mlpl.steps import build_report

    text, written = build_report(paths, group_by, metrics, fmt, split, plots)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if written:
        typer.echo(f"plots: {', '.join(str(p) for p in written if p.suffix == '.png')} (and .svg)")
