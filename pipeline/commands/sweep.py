"""`mlpl sweep`: methods × regimes × `--grid` values × seeds over one dataset and store, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from mlpl.app import app
from mlpl.errors import check_out_folder
from mlpl.schemas.errors import InputError
from mlpl.train_options import run_overrides, with_run_options


def expand_methods(text: str) -> list[str]:
    """Comma-separated method names or patterns (`ll-*`, `*` for every registered method), in the order given."""
    from mlpl.config import list_methods_matching

    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        found = list_methods_matching(part)
        if not found:
            raise InputError(f"--methods: pattern {part!r} matches no method (see `mlpl methods`)")
        names += found
    if not names:
        raise InputError("--methods: give at least one method, e.g. an,gr,aevlp")
    return list(dict.fromkeys(names))


def check_regimes(regimes: list[str], available: tuple[str, ...], dataset: Path) -> None:
    import difflib

    for regime in regimes:
        if regime not in available:
            close = difflib.get_close_matches(regime, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"--regime: dataset {dataset} has no observation regime {regime!r}. Available: "
                             f"{list(available)}{hint} (add one with `mlpl observe`)")


@app.command()
@with_run_options
def sweep(
    dataset: Annotated[str, typer.Option(help="Prepared dataset folder, or its name under --data-root.")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated methods or patterns: an,gr,aevlp or '*' (see `mlpl methods`).")] = "aevlp",
    seeds: Annotated[str, typer.Option(help="Run seeds: 0-2, or 0,3,5.")] = "0",
    regime: Annotated[list[str] | None, typer.Option(
        help="Observation regime (repeatable; default: each method's own).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        help="Sweep a setting: KEY=V1,V2,... (repeatable; every combination), e.g. pseudo_params.delta_neg=0.1,0.5 "
             "or pseudo_mode=dynamic,fixed.")] = None,
    out: Annotated[Path, typer.Option(help="Folder of the sweep's run folders.")] = Path("runs/sweep"),
    **options: Any,
) -> None:
    """Train every combination (every `mlpl train` option applies to each run); finished runs are read, not
    rerun; an interrupted sweep resumes; a failing run is reported and the rest continue. Same under torchrun."""
    from mlpl.overrides import parse_grids, parse_sets
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.steps import resolve_dataset_dir
    from mlpl.sweep import SweepRunner, parse_seeds, plan

    check_out_folder(out)
    ds_dir = resolve_dataset_dir(dataset, options["data_root"])
    meta = DatasetMeta.from_json(ds_dir / "dataset.json")
    names = expand_methods(methods)
    check_regimes(regime or [], meta.regimes, ds_dir)
    grids, sets = parse_grids(grid or []), parse_sets(options["set"] or [])
    for key in ("seed", "regime"):
        if key in {k for k, _ in [*grids, *sets]}:
            raise InputError(f"--set/--grid {key}: a sweep takes its {key}s from --{key}s" if key == "seed" else
                             f"--set/--grid {key}: a sweep takes its regimes from --regime (repeatable)")
    points = plan(names, parse_seeds(seeds), regime or [], grids)
    runner = SweepRunner(ds_dir, out, run_overrides(options), options["preset"], sets, typer.echo)
    result = runner.run(points)
    if runner.rank == 0:
        typer.echo(f"sweep {out}: {len(result.trained)} trained, {len(result.reused)} finished earlier, "
                   f"{len(result.failed)} failed")
        for name, message in result.failed:
            typer.echo(f"  failed: {name}: {message}", err=True)
    if result.failed:
        raise SystemExit(1)
