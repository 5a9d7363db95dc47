"""`mlpl demo`: the whole pipeline on the built-in digits world, offline, with one result table."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.app import app

log = logging.getLogger(__name__)

DEMO_METHODS = ("bce-full", "an", "gr", "aevlp")
TABLE_COLUMNS = ("method", "seed", "test_map", "cf1", "of1", "hamming", "pseudo_precision", "pseudo_recall")


def run_methods(data: Path, store: Path, runs: Path, methods: tuple[str, ...], seeds: tuple[int, ...],
                overrides: dict | None = None) -> list[dict]:
    """Train (or reuse finished) runs of each method × seed; one table row per run."""
    from pipeline.config import resolve_train_cfg
    from pipeline.progress import progress_bar
    from schemas import run as run_schema
    from schemas.dataset import DatasetMeta
    from stages.train.loop import Trainer

    meta = DatasetMeta.from_json(data / "dataset.json")
    rows = []
    for method in methods:
        for seed in seeds:
            out = runs / f"{method}-seed{seed}"
            if (out / run_schema.SUMMARY_JSON).exists():
                summary = run_schema.read_summary(out)
            else:
                cfg = resolve_train_cfg(method, str(data), meta.name, str(out), None,
                                        {"seed": seed, "pseudo_store": str(store), **(overrides or {})})
                with progress_bar() as bar:
                    summary = Trainer(cfg, progress=bar).run()
            test = summary.test
            q = summary.pseudo_quality
            rows.append({
                "method": method, "seed": seed, "test_map": test.map, "cf1": test.cf1, "of1": test.of1,
                "hamming": test.hamming, "pseudo_precision": q.get("precision", float("nan")),
                "pseudo_recall": q.get("recall", float("nan")), "run": str(out),
            })
    return rows


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset, store, runs and results.")] = Path("runs/demo"),
    seeds: Annotated[int, typer.Option(help="Training seeds per method (results averaged).")] = 1,
) -> None:
    """Prepare the digits world, fit its teacher, precompute the store, train BCE/AN/GR/AEVLP, report."""
    import numpy as np
    import torch

    from pipeline.commands.precompute import precompute_clip
    from pipeline.commands.prepare import prepare
    from stages.evaluate.report import format_table, load_run_model, plot_probability_distributions
    from stages.train.loop import predict
    from stages.train.stream import StreamCfg

    t0 = time.time()
    data, store, runs = out / "data", out / "store", out / "runs"
    if not (data / "dataset.json").exists():
        prepare(dataset="digits", out=data, regime=["full", "spml"])
    precompute_clip(dataset=str(data), out=store)
    rows = run_methods(data, store, runs, DEMO_METHODS, tuple(range(seeds)))
    table = format_table(rows, TABLE_COLUMNS)
    curves = {}
    for row in rows:
        if row["seed"] == 0:
            cfg, model, ds = load_run_model(Path(row["run"]))
            stream = StreamCfg(image_size=cfg.image_size, batch_size=64, workers=cfg.workers)
            _, probs, full = predict(model, ds, "test", stream, torch.device("cpu"))
            curves[row["method"]] = (probs, full)
    plot = plot_probability_distributions(curves, out / "probabilities.png")
    means = {m: float(np.mean([r["test_map"] for r in rows if r["method"] == m])) for m in DEMO_METHODS}
    (out / "results.md").write_text(table + "\n")
    typer.echo(table)
    typer.echo("mean test mAP: " + ", ".join(f"{m} {v:.2f}" for m, v in means.items()))
    typer.echo(f"runs: {runs}   plot: {plot}   table: {out / 'results.md'}   ({time.time() - t0:.0f} s)")
