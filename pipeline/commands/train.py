"""`mlpl train`, `mlpl evaluate`: stage two and its evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from mlpl import steps
from mlpl.app import app
from mlpl.config import DEFAULT_METHOD
from mlpl.errors import check_out_folder
from mlpl.progress import progress_bar
from mlpl.schemas.errors import InputError, check_range
from mlpl.train_options import run_overrides, with_run_options


@app.command()
@with_run_options
def train(
    dataset: Annotated[str, typer.Option(help="Prepared dataset folder, or its name under --data-root.")],
    method: Annotated[str, typer.Option(help="Method preset (see `mlpl methods`).")] = DEFAULT_METHOD,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<dataset>-<method>-<seed>).")] = None,
    regime: Annotated[str | None, typer.Option(help="Observation regime (default: the method's).")] = None,
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
    **options: Any,
) -> None:
    """Train a classifier with a method preset; resumes from `last.pt` if the run folder has one."""
    from mlpl.config import resolve_train_cfg
    from mlpl.overrides import nest, parse_sets
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.train.loop import Trainer

    if out is not None:
        check_out_folder(out)
    ds_dir = steps.resolve_dataset_dir(dataset, options["data_root"])
    meta = DatasetMeta.from_json(ds_dir / "dataset.json")
    out = out or Path("runs") / f"{meta.name}-{method}-{seed}"
    check_out_folder(out)
    overrides = {**run_overrides(options), "regime": regime, "seed": seed, **nest(parse_sets(options["set"] or []))}
    cfg = resolve_train_cfg(method, str(ds_dir.resolve()), meta.name, str(out), options["preset"], overrides,
                            meta.family)
    online = None
    if options["online_teacher"]:
        from mlpl.online_teacher import make_online_sims

        if cfg.pseudo_store is None:
            raise InputError("--online-teacher: needs --pseudo-store (its attributes name the teacher and views)")
        online = make_online_sims(Path(cfg.pseudo_store))
    with progress_bar() as bar:
        trainer = Trainer(cfg, progress=bar, online_sims=online)
        summary = trainer.run()
    if trainer.rank == 0:
        test = summary.test
        val = f"val mAP {summary.val.map:.2f}" if summary.val else "no val split"
        typer.echo(f"{method} on {meta.name}: best epoch {summary.best_epoch}, {val}"
                   + (f", test mAP {test.map:.2f}" if test else "") + f"  → {out}")
        for note in summary.notes:
            typer.echo(f"note: {note}")


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders from `mlpl train` or `mlpl sweep`.")],
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    threshold: Annotated[float | None, typer.Option(help="Threshold for F1/Hamming (default: the run's).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="JSON file to write (one run only; default RUN/eval-<split>.json).")] = None,
    dataset: Annotated[Path | None, typer.Option(
        help="One run only: its prepared dataset, where the two moved (default: the absolute path it records).")
    ] = None,
) -> None:
    """Evaluate runs' best checkpoints on a split: print one table row per run and write JSON per run."""
    from mlpl.schemas.run import write_json_atomic
    from mlpl.stages.evaluate.report import format_table
    from mlpl.stages.train.predict import evaluate_run

    if threshold is not None:
        check_range("threshold", threshold, ge=0.0, le=1.0)
    if out is not None and len(runs) > 1:
        raise InputError(f"--out: names one file, but {len(runs)} runs were given; leave it out to write "
                         "RUN/eval-<split>.json in each")
    if dataset is not None and len(runs) > 1:
        raise InputError(f"--dataset: names one run's dataset, but {len(runs)} runs were given")
    rows = []
    for run in runs:
        result = evaluate_run(run, split, threshold, dataset)
        path = out or run / f"eval-{split}.json"
        write_json_atomic(path, result)
        rows.append({"run": str(run), "method": result["method"], **result["metrics"]})
    typer.echo(format_table(rows))
    typer.echo(f"wrote {out or f'RUN/eval-{split}.json'} for {len(runs)} run(s)")
