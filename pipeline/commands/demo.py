"""`mlpl demo`: the whole pipeline on the built-in digits world, offline: a sweep of four methods and its report."""

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
DEMO_METRICS = "map,cf1,of1,hamming,pseudo_precision,pseudo_recall"


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset, store, runs and results.")] = Path("runs/demo"),
    seeds: Annotated[int, typer.Option(help="Training seeds per method (results averaged).")] = 1,
    smoke: Annotated[bool, typer.Option(help="A tiny world and 2 epochs: checks the wiring in seconds.")] = False,
) -> None:
    """Prepare the digits world, fit its teacher, precompute the store, sweep BCE/AN/GR/AEVLP, report.

    The same as `mlpl sweep --methods bce-full,an,gr,aevlp` followed by `mlpl report --plots`."""
    steps.prefer_passive_openmp()
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.schemas.errors import InputError
    from mlpl.stages.precompute.run import PrecomputeCfg
    from mlpl.stages.precompute.teacher import TeacherCfg, default_teacher_for
    from mlpl.stages.prepare.datasets import PrepareRequest
    from mlpl.sweep import SweepRunner, plan

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
    base = {"pseudo_store": str(store), **(SMOKE_TRAINING if smoke else {})}
    runner = SweepRunner(data, runs, base, None, [], typer.echo)
    result = runner.run(plan(list(DEMO_METHODS), tuple(range(seeds)), [], []))
    if result.failed:
        failed = "; ".join(f"{name}: {message}" for name, message in result.failed)
        raise InputError(f"demo: {len(result.failed)} run(s) failed: {failed}")
    table, plots = steps.build_report([runs], "method", DEMO_METRICS, plots=out / "plots")
    (out / "results.md").write_text(table + "\n")
    typer.echo(table)
    shown = ", ".join(p.name for p in plots if p.suffix == ".png")
    typer.echo(f"runs: {runs}   plots: {out / 'plots'} ({shown})   table: {out / 'results.md'}   "
               f"({time.time() - t0:.0f} s)")
