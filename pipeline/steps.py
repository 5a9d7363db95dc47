"""The pipeline's steps as plain functions, shared by the command modules (which never import each other).

Each step takes typed settings, runs a stage with a progress bar, and returns the lines a command prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mlpl.schemas.errors import InputError

if TYPE_CHECKING:
    from mlpl.stages.precompute.run import PrecomputeCfg
    from mlpl.stages.prepare.datasets import PrepareRequest


def resolve_dataset_dir(dataset: str, data_root: Path | None) -> Path:
    """A prepared dataset folder, or a name looked up under the data root (`MLPL_DATA_ROOT`, else ./data)."""
    path = Path(dataset)
    if (path / "dataset.json").exists():
        return path
    root = data_root or Path(os.environ.get("MLPL_DATA_ROOT", "data"))
    if (root / dataset / "dataset.json").exists():
        return root / dataset
    raise InputError(f"--dataset: {dataset!r} is neither a prepared dataset folder nor a name under the data root "
                     f"{root} (looked for {path / 'dataset.json'} and {root / dataset / 'dataset.json'})")


def prepare(dataset: str, req: PrepareRequest) -> list[str]:
    """Convert a source dataset into a prepared dataset; the lines reporting what was written."""
    from mlpl.schemas.dataset import DATASET_JSON, DatasetMeta
    from mlpl.stages.prepare.datasets import prepare_dataset

    report = prepare_dataset(dataset, req)
    counts = ", ".join(f"{k} {v}" for k, v in report.splits.items())
    regimes = DatasetMeta.from_json(report.out / DATASET_JSON).regimes
    lines = [f"prepared {dataset} → {report.out} ({counts}; regimes: {', '.join(regimes)})"]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable images (listed in {DATASET_JSON})")
    meta = DatasetMeta.from_json(report.out / DATASET_JSON)
    if meta.source.get("layout") == "manifest":
        m = f"m = {meta.expected_positives}" if meta.expected_positives is not None else "m"
        lines.append(f"family {meta.family}: {m} from {meta.m_source}; val split: {meta.source['val']}; "
                     f"{meta.source['unknown_full_labels']} images with unknown full labels")
    return lines


def prefer_passive_openmp() -> None:
    """Let OpenMP threads sleep at barriers instead of spinning (unless OMP_WAIT_POLICY is set already).

    On a CPU teacher the DataLoader workers share the cores with the teacher's OpenMP threads; a thread
    spinning while its partner is preempted by a worker burns the core the worker needs. Measured on a
    2-core CPU with the digits teacher: the stage went from 0.79× to 0.84× the bare model rate and the bare
    rate did not move (benchmarks/RESULTS.md). libgomp reads the variable when torch is first imported, so
    this must run before that; it changes no number, only how idle threads wait.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_workers(device: str | None = "cpu") -> int:
    """Stage one's DataLoader workers when --workers is not given: with the teacher on a GPU, every core of this
    process but the main one's (`--workers auto`: cutting 17 views costs more CPU than the GPU's forward); on the
    CPU the teacher's threads need the cores, so one per spare core, at most 4 (at least 1)."""
    from mlpl.stages.runtime import pick_device, resolve_workers

    if pick_device(device).type == "cuda":
        return max(1, resolve_workers("auto"))
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def precompute(cfg: PrecomputeCfg) -> list[str]:
    """Run stage one with an images/s progress bar; the line reporting the store (rank 0 only, else none)."""
    from mlpl.progress import progress_bar
    from mlpl.schemas.store import open_store
    from mlpl.stages.precompute.run import run_precompute

    with progress_bar(rate_unit="images") as bar:
        report = run_precompute(cfg, progress=bar)
    if report.rank != 0:
        return []
    done = int(open_store(report.store).done_matrix().sum())
    rate = report.views / report.seconds if report.seconds > 0 else 0.0
    share = " (rank 0's share)" if report.world > 1 else ""
    return [
        f"store {report.store}: {done}/{report.tasks_total} tasks done; this run{share}: {report.images} "
        f"images, {report.views} views, {rate:,.0f} views/s"
        + (f"; {len(report.corrupt_rows)} corrupt rows" if report.corrupt_rows else "")
    ]


def build_report(paths: list[Path], group_by: str = "method", metrics: str = "map", fmt: str = "md",
                 split: str = "test", plots: Path | None = None) -> tuple[str, list[Path]]:
    """The formatted mean ± std table of the runs under `paths`, and the figures written into `plots` (if given)."""
    from mlpl.stages.evaluate.plots import write_plots
    from mlpl.stages.evaluate.runs import find_runs
    from mlpl.stages.evaluate.tables import build_table, format_report, parse_metrics
    from mlpl.stages.train.predict import test_predictions

    keys = tuple(k.strip() for k in group_by.split(",") if k.strip())
    if not keys:
        raise InputError("--group-by: give at least one key, e.g. method or method,regime")
    wanted = parse_metrics(metrics)
    runs = find_runs(paths)
    text = format_report(build_table(runs, keys, wanted, split), fmt)
    written = [] if plots is None else write_plots(runs, keys, wanted[0], split, plots,
                                                   lambda run: test_predictions(run.path))
    return text, written
