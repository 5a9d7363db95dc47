"""`mlpl prepare`, `observe`, `validate`, `verify`, `export-formatted`: source layouts ⇄ prepared datasets, checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mlpl import steps
from mlpl.app import app
from mlpl.schemas import dataset as dataset_schema
from mlpl.schemas.dataset import DATASET_JSON, DatasetMeta
from mlpl.schemas.errors import InputError


@app.command()
def prepare(
    dataset: Annotated[str, typer.Option(help="Dataset name: digits, coco, ... (see `mlpl datasets`).")],
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to (must not exist).")],
    root: Annotated[Path | None, typer.Option(help="The source dataset's folder, in its original layout.")] = None,
    regime: Annotated[
        list[str] | None,
        typer.Option(help="Observation regimes to write (repeatable): full, spml, partial-0.5, ... "
                          "(default: full and spml; manifest: only its own, 'given')"),
    ] = None,
    rows_per_shard: Annotated[int, typer.Option(help="Images per WebDataset shard (= store chunk).")] = 1000,
    skip_corrupt: Annotated[bool, typer.Option(help="Drop unreadable images (listed in dataset.json).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    size: Annotated[int | None, typer.Option(help="digits: official train canvases (train + val).")] = None,
    test_size: Annotated[int | None, typer.Option(help="digits: test canvases.")] = None,
    canvas: Annotated[int | None, typer.Option(help="digits: canvas side in pixels.")] = None,
    cells: Annotated[int | None, typer.Option(help="digits: grid cells per side.")] = None,
    max_digits: Annotated[int | None, typer.Option(help="digits: most digits per canvas.")] = None,
    seed: Annotated[int | None, typer.Option(help="digits: generator seed.")] = None,
    no_test: Annotated[
        bool | None,
        typer.Option("--no-test", help="coco, voc: prepare without the test split (its files may be absent)."),
    ] = None,
    year: Annotated[int | None, typer.Option(help="coco: 2014 or 2017 (default: the one under --root).")] = None,
    pool: Annotated[
        Path | None,
        typer.Option(help="nus: folder with the literature's re-crawled image lists formatted_{train,val}_images.npy."),
    ] = None,
    from_formatted: Annotated[
        Path | None,
        typer.Option(help="Import the literature's formatted_{train,val}_{images,labels,labels_obs}.npy from here."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="With --from-formatted, or manifest: the folder image paths are relative to "
                                       "(manifest default: the manifest's folder).")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="manifest: CSV, TSV, JSONL or Parquet, one row per image (docs/own-data.md).")
    ] = None,
    classes: Annotated[
        Path | None, typer.Option(help="manifest: class names, one per line, in order (default: the sorted names "
                                       "the manifest uses).")
    ] = None,
    family: Annotated[
        str | None, typer.Option(help="manifest: hyperparameter family voc, coco, nus, cub or generic (default "
                                      "generic, with m measured on the val split).")
    ] = None,
) -> None:
    """Convert a source dataset into a prepared dataset (shards, labels, observation regimes)."""
    from mlpl.errors import check_out_folder
    from mlpl.stages.prepare.datasets import PrepareRequest

    # before any input is read (a COCO-2014 JSON takes seconds): the output folder can be made
    check_out_folder(out)
    if out.exists() and not overwrite:
        raise InputError(f"--out {out}: already exists; choose another --out or pass --overwrite")
    options = {
        "size": size, "test_size": test_size, "canvas": canvas, "cells": cells, "max_digits": max_digits,
        "seed": seed, "no_test": no_test, "year": year, "pool": pool, "manifest": manifest, "classes": classes,
        "family": family,
    }
    req = PrepareRequest(
        out=out, root=root, regimes=tuple(regime) if regime else None, rows_per_shard=rows_per_shard,
        skip_corrupt=skip_corrupt, overwrite=overwrite, options=options, from_formatted=from_formatted, images=images,
    )
    for line in steps.prepare(dataset, req):
        typer.echo(line)


@app.command()
def observe(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    regime: Annotated[
        list[str], typer.Option(help="Regime to add (repeatable), e.g. partial-0.3, spml-unlabeled-0.5.")
    ],
) -> None:
    """Add observation regimes to a prepared dataset."""
    from mlpl.stages.prepare.observations import write_regimes

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
    from mlpl.schemas import run as run_schema
    from mlpl.schemas import store as store_schema

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
    from mlpl.stages.prepare.datasets import DATASETS

    for info in DATASETS:
        typer.echo(f"{info.name:10s} {info.description}  [{info.reference}]")


@app.command()
def verify(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    card: Annotated[
        Path | None, typer.Option(help="Data card to compare with (default: data_cards/<dataset name>.md).")
    ] = None,
) -> None:
    """Check a prepared dataset against its data card; differences are listed and exit with code 1."""
    from mlpl.stages.prepare.cards import verify as verify_dataset

    report = verify_dataset(dataset, card)
    where = report.card if report.card is not None else "no data card for this dataset: card-independent checks only"
    typer.echo(f"{dataset}: {where}")
    for fact in report.facts:
        typer.echo(f"      {fact}")
    for check in report.checks:
        typer.echo(check.line())
    if not report.ok:
        typer.echo(f"{len(report.differences)} difference(s) from the expected values")
        raise typer.Exit(1)
    typer.echo("ok: every check agrees")


@app.command("export-formatted")
def export_formatted(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder to write the formatted_*.npy arrays to (must not exist).")],
    regime: Annotated[
        str | None,
        typer.Option(help="Observed labels to write as labels_obs (default: spml-given if present, else spml)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Write the literature's formatted_{train,val}_{images,labels,labels_obs}.npy (their val = the test split)."""
    from mlpl.stages.prepare.formatted import export_formatted as export

    result = export(dataset, out, regime=regime, overwrite=overwrite)
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
    typer.echo(f"exported {dataset} → {result['out']} ({counts}; labels_obs from {result['regime']}; "
               f"image paths relative to {result['images_root']})")
