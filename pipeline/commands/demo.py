"""`mlpl demo`: the whole pipeline on the built-in digits world, offline, with one result table."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from mlpl import steps
from mlpl.app import app

log = logging.getLogger(__name__)

DEMO_METHODS = ("bce-full", "an", "gr", "aevlp")
STORE_SEEDS = 4  # augment seeds in the store; epoch e reads seed e mod 4
SMOKE_WORLD = {"size": 120, "test_size": 40, "rows_per_shard": 64}
SMOKE_TRAINING = {"epochs": 2, "image_size": 32}
TABLE_COLUMNS = ("method", "seed", "test_map", "cf1", "of1", "hamming", "pseudo_precision", "pseudo_recall")


def run_methods(data: Path, store: Path, runs: Path, methods: tuple[str, ...], seeds: tuple[int, ...],
                overrides: dict | None = None) -> list[dict]:
    """Train (or reuse finished) runs of each method × seed; one table row per run."""
    from mlpl.config import resolve_train_cfg
    from mlpl.progress import progress_bar
    from mlpl.schemas import run as run_schema
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.train.loop import Trainer

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


SUMMARY_COLUMNS = ("method", "runs", "test_map_mean", "test_map_std", "cf1_mean", "of1_mean", "hamming_mean")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, one row per method (in first-seen order)."""
    import numpy as np

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        maps = np.array([r["test_map"] for r in mine])
        out.append({
            "method": method, "runs": len(mine), "test_map_mean": float(maps.mean()),
            "test_map_std": float(maps.std(ddof=1)) if len(mine) > 1 else 0.0,
            **{f"{k}_mean": float(np.mean([r[k] for r in mine])) for k in ("cf1", "of1", "hamming")},
        })
    return out


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset, store, runs and results.")] = Path("runs/demo"),
    seeds: Annotated[int, typer.Option(help="Training seeds per method (results averaged).")] = 1,
    smoke: Annotated[bool, typer.Option(help="A tiny world and 2 epochs: checks the wiring in seconds.")] = False,
) -> None:
    """Prepare the digits world, fit its teacher, precompute the store, train BCE/AN/GR/AEVLP, report."""
    steps.prefer_passive_openmp()
    import torch
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.evaluate.plots import plot_probability_distributions
    from mlpl.stages.evaluate.report import format_table
    from mlpl.stages.precompute.run import PrecomputeCfg
    from mlpl.stages.precompute.teacher import TeacherCfg, default_teacher_for
    from mlpl.stages.prepare.datasets import PrepareRequest
    from mlpl.stages.runtime import resolve_workers
    from mlpl.stages.train.predict import load_run_model, predict
    from mlpl.stages.train.stream import StreamCfg

    t0 = time.time()
    data, store, runs = out / "data", out / "store", out / "runs"
    if not (data / "dataset.json").exists():
        world = dict(SMOKE_WORLD if smoke else {})
        req = PrepareRequest(out=data, regimes=("full", "spml"), rows_per_shard=world.pop("rows_per_shard", 1000),
                             options=world)
        for line in steps.prepare("digits", req):
            typer.echo(line)
    meta = DatasetMeta.from_json(data / "dataset.json")
    stage_one = PrecomputeCfg(dataset=data, out=store, seeds=tuple(range(STORE_SEEDS)),
                              teacher=TeacherCfg(model=default_teacher_for(meta.name)), workers=steps.default_workers())
    for line in steps.precompute(stage_one):
        typer.echo(line)
    rows = run_methods(data, store, runs, DEMO_METHODS, tuple(range(seeds)), SMOKE_TRAINING if smoke else None)
    table = format_table(rows, TABLE_COLUMNS)
    curves = {}
    for row in rows:
        if row["seed"] == 0:
            cfg, model, ds = load_run_model(Path(row["run"]))
            stream = StreamCfg.of(cfg.data_cfg(), batch_size=64, workers=resolve_workers(cfg.workers))
            _, probs, full = predict(model, ds, "test", stream, torch.device("cpu"))
            curves[row["method"]] = (probs, full)
    plot = plot_probability_distributions(curves, out / "probabilities")[0]
    summary = format_table(summarise(rows), SUMMARY_COLUMNS)
    (out / "results.md").write_text(table + "\n\n" + summary + "\n")
    typer.echo(table)
    if seeds > 1:
        typer.echo("\n" + summary)
    typer.echo(f"runs: {runs}   plot: {plot}   table: {out / 'results.md'}   ({time.time() - t0:.0f} s)")
