"""`mlpl train`, `mlpl evaluate`: stage two and its evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mlpl import steps
from mlpl.app import app
from mlpl.config import DEFAULT_METHOD
from mlpl.errors import check_out_folder
from mlpl.progress import progress_bar
from mlpl.schemas.errors import InputError, check_range
from mlpl.stages.runtime import workers_option


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Prepared dataset folder, or its name under --data-root.")],
    method: Annotated[str, typer.Option(help="Method preset (see `mlpl methods`).")] = DEFAULT_METHOD,
    pseudo_store: Annotated[Path | None, typer.Option(help="Store from `mlpl precompute-clip`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<dataset>-<method>-<seed>).")] = None,
    regime: Annotated[str | None, typer.Option(help="Observation regime (default: the method's).")] = None,
    preset: Annotated[Path | None, typer.Option(help="A TOML file overriding the method's preset.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process.")] = None,
    lr: Annotated[float | None, typer.Option(help="Backbone learning rate.")] = None,
    head_lr_mult: Annotated[float | None, typer.Option(help="Head learning-rate multiplier.")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Backbone: resnet50 (default), resnet18, small-cnn, timm:NAME (any timm model), open_clip:MODEL[@TAG] "
             "(a CLIP image tower); `mlpl backbones` lists them.")] = None,
    head: Annotated[str | None, typer.Option(
        help="Classifier head: linear or boostlu (default: the method's); combines with any method.")] = None,
    backbone_weights: Annotated[Path | None, typer.Option(
        help="Local backbone weights: .safetensors, .pth/.pt/.bin (tensors only, optionally wrapped as "
             "{'state_dict': ...} or {'model': ...}).")] = None,
    pretrained: Annotated[bool | None, typer.Option(
        "--pretrained/--no-pretrained", help="The backbone library's own pretrained weights (from its local "
                                             "cache), or random initialisation.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels (default: the backbone's).")] = None,
    mean: Annotated[str | None, typer.Option(
        help="Normalisation mean R,G,B of [0, 1] images (default: the backbone's).")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std R,G,B (default: the backbone's).")] = None,
    pseudo: Annotated[str | None, typer.Option(help="Pseudo-labeller: damp, vlpl, random, none.")] = None,
    pseudo_mode: Annotated[str | None, typer.Option(help="dynamic, fixed or accumulated.")] = None,
    workers: Annotated[str | None, typer.Option(
        help="DataLoader workers: a count, or 'auto' (this process's cores minus one).")] = None,
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
    max_batches: Annotated[int | None, typer.Option(help="Stop each epoch after N batches (smoke runs).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Where named datasets live.")] = None,
    online_teacher: Annotated[bool, typer.Option(
        help="Run the store's teacher inside every step instead of reading the store (for comparison).")] = False,
) -> None:
    """Train a classifier with a method preset; resumes from `last.pt` if the run folder has one."""
    from mlpl.config import Overrides, resolve_train_cfg
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.train.datacfg import parse_channels
    from mlpl.stages.train.loop import Trainer

    if out is not None:
        check_out_folder(out)
    ds_dir = steps.resolve_dataset_dir(dataset, data_root)
    meta = DatasetMeta.from_json(ds_dir / "dataset.json")
    out = out or Path("runs") / f"{meta.name}-{method}-{seed}"
    check_out_folder(out)
    overrides = Overrides.of(
        pseudo_store=str(pseudo_store.resolve()) if pseudo_store else None, regime=regime, epochs=epochs,
        batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult, backbone=backbone, head=head,
        backbone_weights=str(backbone_weights) if backbone_weights else None, pretrained=pretrained,
        image_size=image_size, pseudo=pseudo, pseudo_mode=pseudo_mode, seed=seed, workers=workers_option(workers),
        device=device, max_batches=max_batches,
        mean=parse_channels(mean, "--mean") if mean is not None else None,
        std=parse_channels(std, "--std") if std is not None else None,
    )
    cfg = resolve_train_cfg(method, str(ds_dir.resolve()), meta.name, str(out), preset, overrides, meta.family)
    online = None
    if online_teacher:
        from mlpl.online_teacher import make_online_sims

        if cfg.pseudo_store is None:
            raise InputError("--online-teacher: needs --pseudo-store (its attributes name the teacher and views)")
        online = make_online_sims(Path(cfg.pseudo_store))
    with progress_bar() as bar:
        summary = Trainer(cfg, progress=bar, online_sims=online).run()
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
