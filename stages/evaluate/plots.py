"""The papers' figures from run folders (matplotlib, PNG and SVG): validation mAP per epoch, probability
distributions on the test split (AEVLP Fig. 2), pseudo-label precision/recall per epoch and accumulated
(AEVLP Table 3), and a metric against a swept parameter (AEVLP Fig. 3, Table 5)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.stages.evaluate.runs import RunRecord
from mlpl.stages.evaluate.tables import METRIC_LABELS, metric_value

log = logging.getLogger(__name__)

PLOT_SUFFIXES = (".png", ".svg")
# config keys that differ between runs without being a studied parameter
_NOT_SWEPT = {"seed", "out", "description", "reference", "needs_store"}
_NOT_SWEPT_PREFIXES = ("run.", "store_info.", "dataset_info.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in PLOT_SUFFIXES]
    for path in paths:
        fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return paths


def group_runs(runs: list[RunRecord], group_by: tuple[str, ...]) -> dict[str, list[RunRecord]]:
    """Runs by a label made of their `group_by` values (the dataset added when runs span several)."""
    several = len({r.summary.dataset for r in runs}) > 1
    keys = tuple(k for k in group_by if k != "dataset")
    out: dict[str, list[RunRecord]] = {}
    for run in runs:
        label = " ".join(str(run.value(k)) for k in keys) or "runs"
        out.setdefault(f"{label} ({run.summary.dataset})" if several else label, []).append(run)
    return out


def _per_epoch(runs: list[RunRecord], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and the mean over runs of `key` on `split` lines of metrics.jsonl."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.metrics:
            if record.get("split") == split and key in record:
                by_epoch.setdefault(int(record["epoch"]), []).append(float(record[key]))
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([np.mean(by_epoch[e]) for e in epochs])


LEGEND_INSIDE = 8
"""Up to this many lines, the legend sits inside the axes; beyond, beside them (the figure widens for it)."""
PANELS_PER_ROW = 6


def _style(index: int) -> dict[str, Any]:
    """Line style of the index-th group: ten colours, then the same colours with another dash and marker."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4],
            "marker": ("o", "s", "^", "D")[index // 10 % 4], "markersize": 3}


def _new_axes(lines: int, size: tuple[float, float] = (5.0, 3.4)) -> tuple[Any, Any]:
    """A figure with one axes, wide enough for a legend of `lines` entries beside it when they are many."""
    columns = 1 if lines <= 24 else 2
    width = size[0] + (2.6 * columns if lines > LEGEND_INSIDE else 0.0)
    height = max(size[1], 0.16 * lines / columns + 0.8) if lines > LEGEND_INSIDE else size[1]
    return _pyplot().subplots(figsize=(width, height))


def _legend(ax: Any, lines: int, **kwargs: Any) -> None:
    if lines > LEGEND_INSIDE:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 if lines <= 24 else 2,
                  borderaxespad=0.0, **kwargs)
    else:
        ax.legend(fontsize=7, **kwargs)


def plot_val_curves(groups: dict[str, list[RunRecord]], stem: Path) -> list[Path]:
    """Validation mAP per epoch, one line per group (mean over its runs)."""
    fig, ax = _new_axes(len(groups))
    for index, (label, runs) in enumerate(groups.items()):
        epochs, values = _per_epoch(runs, "val", "map")
        ax.plot(epochs, values, label=label, **_style(index))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    _legend(ax, len(groups))
    fig.tight_layout()
    return _save(fig, stem)


def plot_probability_distributions(results: dict[str, tuple[np.ndarray, np.ndarray]], stem: Path) -> list[Path]:
    """Histograms of predicted probabilities of positive and negative cells, one panel per group, at most
    `PANELS_PER_ROW` panels a row (AEVLP Fig. 2). `results[label] = (probs [n, C], full labels [n, C])`."""
    plt = _pyplot()
    columns = min(len(results), PANELS_PER_ROW)
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, (name, (probs, full)) in zip(axes.flat, results.items()):
        ax.hist(probs[full == 0], bins=bins, alpha=0.6, density=True, label="negatives")
        ax.hist(probs[full == 1], bins=bins, alpha=0.6, density=True, label="positives")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted probability")
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("density")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, stem)


def plot_pseudo_quality(groups: dict[str, list[RunRecord]], stem: Path) -> list[Path]:
    """Pseudo-label precision and recall of positives per epoch (solid) and accumulated (dashed)."""
    plt = _pyplot()
    extra = 2.6 if len(groups) > LEGEND_INSIDE else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(8 + extra, max(3.2, 0.16 * len(groups) + 0.8) if extra else 3.2))
    for index, (label, runs) in enumerate(groups.items()):
        style = {"color": f"C{index % 10}", "marker": ("o", "s", "^", "D")[index // 10 % 4], "markersize": 3}
        for ax, name in zip(axes, ("precision", "recall")):
            epochs, values = _per_epoch(runs, "train", f"pseudo_{name}")
            ax.plot(epochs, values, label=label, **style)
            epochs, values = _per_epoch(runs, "train", f"pseudo_acc_{name}")
            ax.plot(epochs, values, linestyle="--", **{**style, "marker": None})
    for ax, name in zip(axes, ("precision", "recall")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"pseudo-label {name} (%)")
    _legend(axes[1], len(groups), title="solid: per epoch, dashed: accumulated", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, stem)


def swept_keys(groups: dict[str, list[RunRecord]]) -> list[str]:
    """Config keys whose value differs between the runs of one group: the parameters a sweep studied."""
    found: dict[str, None] = {}
    for runs in groups.values():
        keys = set().union(*(r.config for r in runs))
        for key in sorted(keys):
            if key in _NOT_SWEPT or key.startswith(_NOT_SWEPT_PREFIXES):
                continue
            values = {repr(r.config.get(key)) for r in runs}
            if len(values) > 1 and all(isinstance(r.config.get(key), int | float | str) for r in runs):
                found[key] = None
    return list(found)


def plot_metric_vs(groups: dict[str, list[RunRecord]], key: str, metric: str, split: str,
                   stem: Path) -> list[Path]:
    """`metric` (mean ± std over seeds) against the values of `key`, one line per group."""
    fig, ax = _new_axes(len(groups))
    categorical = False
    for index, (label, runs) in enumerate(groups.items()):
        by_value: dict[Any, list[float]] = {}
        for run in runs:
            value = metric_value(run, metric, split)
            if key in run.config and value is not None:
                by_value.setdefault(run.config[key], []).append(value)
        if not by_value:
            continue
        xs = list(by_value)
        categorical = categorical or any(isinstance(x, str) for x in xs)
        if not categorical:
            xs = sorted(xs)
        means = [np.mean(by_value[x]) for x in xs]
        stds = [np.std(by_value[x], ddof=1) if len(by_value[x]) > 1 else 0.0 for x in xs]
        ax.errorbar([str(x) for x in xs] if categorical else xs, means, yerr=stds, capsize=3, label=label,
                    **_style(index))
    ax.set_xlabel(key)
    ax.set_ylabel(f"{split} {METRIC_LABELS.get(metric, metric)}")
    _legend(ax, len(groups))
    fig.tight_layout()
    return _save(fig, stem)


Predictor = Callable[[RunRecord], tuple[np.ndarray, np.ndarray] | None]


def write_plots(runs: list[RunRecord], group_by: tuple[str, ...], metric: str, split: str, out: Path,
                predictions: Predictor) -> list[Path]:
    """Every figure that the runs have data for, into `out`; returns the files written.

    `predictions(run)` gives (probabilities, full labels) of the run's test split, or None.
    """
    groups = group_runs(runs, group_by)
    written = plot_val_curves(groups, out / "val_map")
    results = {}
    for label, members in groups.items():
        first = min(members, key=lambda r: r.summary.seed)
        found = predictions(first)
        if found is not None:
            results[f"{label} (seed {first.summary.seed})"] = found
    if results:
        written += plot_probability_distributions(results, out / "probabilities")
    with_pseudo = {label: members for label, members in groups.items()
                   if any("pseudo_precision" in m for r in members for m in r.metrics)}
    if with_pseudo:
        written += plot_pseudo_quality(with_pseudo, out / "pseudo_quality")
    for key in swept_keys(groups):
        written += plot_metric_vs(groups, key, metric, split, out / f"{metric}_vs_{key.replace('.', '_')}")
    log.info("wrote %d plot files to %s", len(written), out)
    return written
