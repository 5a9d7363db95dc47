"""Mean ± std tables over runs in the layout of the papers' Table 1: groups as rows, datasets as columns.

A cell is the runs of one group (`--group-by` keys, `method` by default) on one dataset; it shows the mean
and the sample standard deviation (n − 1; 0 for one run) of a metric, and how many runs it holds. Runs of
two different prepared datasets that share a name never fall into one cell: that is an error, since their
numbers are not comparable.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.stages.evaluate.pseudo_quality import QUALITY_NAMES
from mlpl.stages.evaluate.runs import RunRecord

log = logging.getLogger(__name__)

METRIC_LABELS = {"map": "mAP", "cf1": "CF1", "of1": "OF1", "macro_f1": "macro-F1", "hamming": "Hamming"}
PSEUDO_METRICS = tuple(f"pseudo_{name}" for name in QUALITY_NAMES)
"""Pseudo-label quality of the best epoch (docs/methods.md §2), reportable like the split metrics."""
KNOWN_METRICS = (*run_schema.METRIC_KEYS, *PSEUDO_METRICS)
# keys that differ between the seeds of one experiment without making it another experiment
_SAME_EXPERIMENT = {"seed", "out", "run.source_commit", "run.mlpl_version", "run.started"}


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0


@dataclass(frozen=True)
class Table:
    """`cells[(row, dataset, metric)]`; rows are tuples of the `group_by` values, in first-seen order."""

    group_by: tuple[str, ...]
    metrics: tuple[str, ...]
    split: str
    rows: tuple[tuple, ...]
    datasets: tuple[str, ...]
    cells: dict[tuple[tuple, str, str], Cell]


def parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown or not metrics:
        raise InputError(f"--metrics: unknown metric(s) {unknown or [text]}. Available: {list(KNOWN_METRICS)}")
    return metrics


def metric_value(run: RunRecord, metric: str, split: str) -> float | None:
    """A run's value of `metric` (None where it has none: no test split, no pseudo-labels)."""
    if metric in PSEUDO_METRICS:
        return run.summary.pseudo_quality.get(metric[len("pseudo_"):])
    split_metrics = run.split_metrics(split)
    return None if split_metrics is None else float(getattr(split_metrics, metric))


def build_table(runs: list[RunRecord], group_by: tuple[str, ...] = ("method",),
                metrics: tuple[str, ...] = ("map",), split: str = "test") -> Table:
    """Group `runs` into cells; an error if one cell would mix two prepared datasets of the same name."""
    if split not in ("val", "test"):
        raise InputError(f"--split: {split!r}; expected val or test")
    group_by = tuple(k for k in group_by if k != "dataset")  # datasets are the columns
    members: dict[tuple[tuple, str], list[RunRecord]] = {}
    for run in runs:
        key = tuple(run.value(k) for k in group_by)
        members.setdefault((key, run.summary.dataset), []).append(run)
    for (key, dataset), cell_runs in members.items():
        identities = {r.dataset_identity() for r in cell_runs}
        if len(identities) > 1:
            paths = ", ".join(str(r.path) for r in cell_runs[:4])
            raise InputError(f"report: runs of {len(identities)} different prepared datasets named {dataset!r} "
                             f"would share the cell {dict(zip(group_by, key))} ({paths}); report them separately "
                             "or group by a key that tells them apart")
        _warn_mixed(cell_runs, group_by, key)
    cells = {}
    for (key, dataset), cell_runs in members.items():
        for metric in metrics:
            values = [metric_value(r, metric, split) for r in cell_runs]
            cells[(key, dataset, metric)] = Cell(tuple(v for v in values if v is not None))
    rows = tuple(dict.fromkeys(key for key, _ in members))
    datasets = tuple(dict.fromkeys(dataset for _, dataset in members))
    return Table(group_by, metrics, split, rows, datasets, cells)


def _warn_mixed(runs: list[RunRecord], group_by: tuple[str, ...], key: tuple) -> None:
    keys = set().union(*(r.config for r in runs)) - _SAME_EXPERIMENT - set(group_by)
    differing = sorted(k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1)
    if differing:
        log.warning("cell %s averages runs whose settings differ in %s; add them to --group-by to separate them",
                    dict(zip(group_by, key)), differing[:6])


def _number(metric: str, value: float) -> str:
    if value != value:
        return "—"
    return f"{value:.4f}" if metric == "hamming" else f"{value:.2f}"


def _wide(table: Table, pm: str) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts of the Table-1 layout (`pm` joins mean and std)."""
    several = len(table.datasets) > 1
    header = list(table.group_by)
    for dataset in table.datasets:
        prefix = f"{dataset} " if several else ""
        header += [prefix + METRIC_LABELS.get(m, m) for m in table.metrics] + [prefix + "runs"]
    lines = []
    for row in table.rows:
        cells = [str(v) for v in row]
        for dataset in table.datasets:
            found = [table.cells.get((row, dataset, m)) for m in table.metrics]
            for metric, cell in zip(table.metrics, found):
                cells.append("—" if cell is None or not cell.n else
                             f"{_number(metric, cell.mean)}{pm}{_number(metric, cell.std)}")
            cells.append(str(max((c.n for c in found if c is not None), default=0)))
        lines.append(cells)
    return header, lines


def to_markdown(table: Table) -> str:
    header, lines = _wide(table, " ± ")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)])


def to_latex(table: Table) -> str:
    header, lines = _wide(table, r" $\pm$ ")
    escape = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    body = [" & ".join(escape(c) for c in line) + r" \\" for line in lines]
    return "\n".join([r"\begin{tabular}{" + "l" * len(table.group_by) + "r" * (len(header) - len(table.group_by))
                      + "}", r"\toprule", " & ".join(escape(h) for h in header) + r" \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"])


def long_rows(table: Table) -> list[dict]:
    """One dict per cell: the group values, dataset, split, metric, mean, std, runs and the values."""
    out = []
    for row in table.rows:
        for dataset in table.datasets:
            for metric in table.metrics:
                cell = table.cells.get((row, dataset, metric))
                if cell is None:
                    continue
                out.append({**dict(zip(table.group_by, row)), "dataset": dataset, "split": table.split,
                            "metric": metric, "mean": cell.mean, "std": cell.std, "runs": cell.n,
                            "values": list(cell.values)})
    return out


def to_csv(table: Table) -> str:
    rows = long_rows(table)
    buffer = io.StringIO()
    columns = [*table.group_by, "dataset", "split", "metric", "mean", "std", "runs"]
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


def to_json(table: Table) -> str:
    return json.dumps(long_rows(table), indent=2)


FORMATS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}


def format_report(table: Table, fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r}; expected one of {list(FORMATS)}")
    return FORMATS[fmt](table)
