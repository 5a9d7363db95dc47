"""`mlpl prepare`, `mlpl observe`, `mlpl validate`: source layouts → prepared datasets, regimes, checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.app import app
from schemas import dataset as dataset_schema
from schemas.dataset import DATASET_JSON, DatasetMeta
from schemas.errors import InputError


@app.command()
def prepare(
    dataset: Annotated[str, typer.Option(help="Dataset name: digits, coco, ... (see `mlpl datasets`).")],
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to (must not exist).")],
    root: Annotated[Optional[Path], typer.Option(help="The source dataset's folder, in its original layout.")] = None,
    regime: Annotated[
        list[str], typer.Option(help="Observation regimes to write (repeatable): full, spml, partial-0.5, ...")
    ] = ["full", "spml"],  # noqa: B006 (typer reads the default)
    rows_per_shard: Annotated[int, typer.Option(help="Images per WebDataset shard (= store chunk).")] = 1000,
    skip_corrupt: Annotated[bool, typer.Option(help="Drop unreadable images (listed in dataset.json).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    size: Annotated[Optional[int], typer.Option(help="digits: official train canvases (train + val).")] = None,
    test_size: Annotated[Optional[int], typer.Option(help="digits: test canvases.")] = None,
    canvas: Annotated[Optional[int], typer.Option(help="digits: canvas side in pixels.")] = None,
    cells: Annotated[Optional[int], typer.Option(help="digits: grid cells per side.")] = None,
    max_digits: Annotated[Optional[int], typer.Option(help="digits: most digits per canvas.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="digits: generator seed.")] = None,
    no_test: Annotated[Optional[bool], typer.Option("--no-test", help="coco: allow a layout without the test split.")] = None,
) -> None:
    """Convert a source dataset into a prepared dataset (shards, labels, observation regimes)."""
    from stages.prepare.datasets import PrepareRequest, prepare_dataset

    options = {
        "size": size, "test_size": test_size, "canvas": canvas, "cells": cells, "max_digits": max_digits,
        "seed": seed, "no_test": no_test,
    }
    req = PrepareRequest(
        out=out, root=root, regimes=tuple(regime), rows_per_shard=rows_per_shard, skip_corrupt=skip_corrupt,
        overwrite=overwrite, options=options,
    )
    report = prepare_dataset(dataset, req)
    counts = ", ".join(f"{k} {v}" for k, v in report.splits.items())
    typer.echo(f"prepared {dataset} → {report.out} ({counts}; regimes: {', '.join(regime)})")
    if report.skipped:
        typer.echo(f"skipped {len(report.skipped)} unreadable images (listed in {DATASET_JSON})")


@app.command()
def observe(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    regime: Annotated[list[str], typer.Option(help="Regime to add (repeatable), e.g. partial-0.3, spml-unlabeled-0.5.")],
) -> None:
    """Add observation regimes to a prepared dataset."""
    from stages.prepare.observations import write_regimes

    ds = dataset_schema.open_dataset(dataset)
    paths = write_regimes(dataset, ds.labels, regime)
    meta = DatasetMeta(**{**ds.meta.__dict__, "regimes": tuple(dataset_schema.list_regimes(dataset))})
    tmp = dataset / (DATASET_JSON + ".tmp")
    tmp.write_text(meta.to_json())
    tmp.replace(dataset / DATASET_JSON)
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="A prepared dataset, a store or a run folder.")]) -> None:
    """Check a prepared dataset, pseudo-label store or run folder against its contract."""
    from schemas import run as run_schema
    from schemas import store as store_schema

    if (path / DATASET_JSON).exists():
        ds = dataset_schema.validate(path)
        typer.echo(f"ok: prepared dataset {ds.meta.name!r}, {ds.meta.splits}, regimes {list(ds.meta.regimes)}")
    elif (path / "zarr.json").exists():
        store = store_schema.validate(path)
        typer.echo(json.dumps(store_schema.describe(store), indent=2))
    elif (path / run_schema.SUMMARY_JSON).exists():
        s = run_schema.validate(path)
        typer.echo(f"ok: run {s.method} on {s.dataset}, best epoch {s.best_epoch}")
    else:
        raise InputError(f"{path}: not a prepared dataset, store or run folder")


@app.command()
def datasets() -> None:
    """List the datasets `mlpl prepare` knows."""
    from stages.prepare.datasets import DATASETS

    for info in DATASETS:
        typer.echo(f"{info.name:10s} {info.description}  [{info.reference}]")
