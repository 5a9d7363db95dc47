"""`mlpl predict`, `mlpl export`: a trained run used on new images, or written out as one model file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mlpl.app import app
from mlpl.progress import progress_bar
from mlpl.schemas.errors import InputError

SHOWN_UNREADABLE = 20


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run folder from `mlpl train`.")],
    inputs: Annotated[list[str], typer.Argument(
        help="Image files, folders (recursive), glob patterns (quote them) or manifests (.csv/.tsv/.jsonl/.parquet).")],
    out: Annotated[Path, typer.Option(help="Predictions file: .csv, .jsonl or .parquet.")],
    threshold: Annotated[float | None, typer.Option(
        help="One threshold for every class (default: the run's, or its recorded per-class thresholds).")] = None,
    thresholds: Annotated[str | None, typer.Option(
        help="val-f1: per class, the threshold that maximises F1 on the run's val split (recorded in the run).")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="At most K labels per image, the most probable first.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: spare cores, at most 4).")] = None,
    images: Annotated[Path | None, typer.Option(
        help="With a manifest: the folder its image paths are relative to (default: the manifest's folder).")] = None,
    dataset: Annotated[Path | None, typer.Option(
        help="With --thresholds val-f1: the run's prepared dataset, where it moved.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: cpu).")] = None,
    decode: Annotated[str, typer.Option(
        help="Where JPEGs are decoded: workers (CPU) or device (nvJPEG on the GPU; pixels within a few units).")
    ] = "workers",
) -> None:
    """Predict labels of new images with a run's best weights."""
    from mlpl.stages.deploy.inputs import collect_images
    from mlpl.stages.deploy.model import load_run
    from mlpl.stages.deploy.predict import check_decode, check_output, predict_files, write_predictions
    from mlpl.stages.deploy.thresholds import VAL_F1, val_f1_thresholds

    check_output(out)
    if threshold is not None and thresholds is not None:
        raise InputError("--threshold and --thresholds: give one of them")
    if thresholds is not None and thresholds != VAL_F1:
        raise InputError(f"--thresholds {thresholds!r}: expected {VAL_F1!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold}: expected a probability in [0, 1]")
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k {top_k}: expected at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected at least 1")
    check_decode(decode)
    paths = collect_images(inputs, images)
    loaded = load_run(run, device or "cpu", dataset)
    if thresholds == VAL_F1:
        record = val_f1_thresholds(run, dataset)
        loaded = loaded.with_thresholds(record["thresholds"], VAL_F1)
        typer.echo(f"per-class thresholds chosen on {record['val_images']} val images → "
                   f"{run / 'thresholds.json'}")
    with progress_bar() as bar:
        pred = predict_files(loaded, paths, batch_size=batch_size, workers=workers, threshold=threshold,
                             top_k=top_k, progress=bar, decode=decode)
    meta = {"run": str(Path(run).resolve()), "classes": list(loaded.classes), "thresholds": pred.thresholds,
            "threshold_rule": "--threshold" if threshold is not None else loaded.meta.threshold_rule, "top_k": top_k,
            "unreadable": [p for p, _ in pred.unreadable]}
    write_predictions(out, pred, meta)
    typer.echo(f"predicted {len(pred.images)} images → {out}")
    if pred.unreadable:
        typer.echo(f"skipped {len(pred.unreadable)} unreadable images:")
        for path, reason in pred.unreadable[:SHOWN_UNREADABLE]:
            typer.echo(f"  {path}: {reason}")
        if len(pred.unreadable) > SHOWN_UNREADABLE:
            typer.echo(f"  ... and {len(pred.unreadable) - SHOWN_UNREADABLE} more (logged above)")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder from `mlpl train`.")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")],
    out: Annotated[Path, typer.Option(help="The model file to write.")],
    dataset: Annotated[Path | None, typer.Option(
        help="For runs whose weights carry no metadata: the run's prepared dataset (its class names).")] = None,
) -> None:
    """Write a run's model as one file: uint8 images [B, 3, S, S] in, probabilities out, metadata inside."""
    from mlpl.stages.deploy.export import EXPORT_FORMATS, export_run
    from mlpl.stages.deploy.model import load_run
    from mlpl.stages.deploy.thresholds import VAL_F1, read_thresholds

    EXPORT_FORMATS.get(format, option="--format")
    loaded = load_run(run, "cpu", dataset)
    recorded = read_thresholds(run, loaded.classes)
    if recorded is not None:
        loaded = loaded.with_thresholds(recorded, VAL_F1)
    export_run(loaded, format, out)
    rule = "per-class thresholds (val-f1)" if recorded is not None else f"threshold {loaded.meta.threshold}"
    typer.echo(f"exported {run} → {out} ({format}; {len(loaded.classes)} classes, {loaded.meta.image_size} px, "
               f"{rule})")
