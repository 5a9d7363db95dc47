"""`mlpl report`: finished runs → the mean ± std table of the papers' Table 1 and their figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mlpl.app import app
from mlpl.schemas.errors import InputError


def build_report(paths: list[Path], group_by: str = "method", metrics: str = "map", fmt: str = "md",
                 split: str = "test", plots: Path | None = None) -> tuple[str, list[Path]]:
    """The formatted table of the runs under `paths` and the plot files written (none without `plots`)."""
    from mlpl.stages.evaluate.runs import find_runs
    from mlpl.stages.evaluate.tables import build_table, format_report, parse_metrics

    keys = tuple(k.strip() for k in group_by.split(",") if k.strip())
    if not keys:
        raise InputError("--group-by: give at least one key, e.g. method or method,regime")
    wanted = parse_metrics(metrics)
    runs = find_runs(paths)
    text = format_report(build_table(runs, keys, wanted, split), fmt)
    written: list[Path] = []
    if plots is not None:
        from mlpl.stages.evaluate.plots import write_plots
        from mlpl.stages.train.predict import test_predictions

        written = write_plots(runs, keys, wanted[0], split, plots, lambda run: test_predictions(run.path))
    return text, written


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
    text, written = build_report(paths, group_by, metrics, fmt, split, plots)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if written:
        typer.echo(f"plots: {', '.join(str(p) for p in written if p.suffix == '.png')} (and .svg)")
