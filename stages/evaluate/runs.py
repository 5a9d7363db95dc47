"""Finished run folders as records for reports: found under the paths a user names, read without evaluating."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.schemas.run import flatten_config as flatten

log = logging.getLogger(__name__)

RUN_FIELDS = ("method", "dataset", "regime", "seed")
"""Summary fields a report can group by besides any `config.toml` key (dotted for tables: `pseudo_params.tau`)."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its folder, summary, flattened config (`section.key` → value) and metrics lines."""

    path: Path
    summary: run_schema.RunSummary
    config: dict[str, Any]
    metrics: list[dict[str, Any]]

    def value(self, key: str) -> Any:
        """A grouping value: a summary field (`method`, `dataset`, `regime`, `seed`) or a config key."""
        if key in RUN_FIELDS:
            return getattr(self.summary, key)
        if key in self.config:
            return self.config[key]
        raise InputError(f"--group-by: run {self.path} has no key {key!r}; known keys: "
                         f"{sorted(set(RUN_FIELDS) | set(self.config))}")

    def split_metrics(self, split: str) -> run_schema.SplitMetrics | None:
        return self.summary.test if split == "test" else self.summary.val

    def dataset_identity(self) -> str:
        """The dataset's fingerprint when the run recorded it, else its name (older runs)."""
        return str(self.config.get("dataset_info.fingerprint", self.summary.dataset))


def read_run(path: Path) -> RunRecord:
    summary = run_schema.read_summary(path)
    config_path = path / run_schema.CONFIG_TOML
    try:
        config = flatten(tomllib.loads(config_path.read_text())) if config_path.exists() else {}
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{config_path}: not valid TOML ({e})") from None
    return RunRecord(path=path, summary=summary, config=config, metrics=run_schema.read_metrics(path))


def _plan_order(root: Path):
    """Sort key: runs listed in a sweep index (`sweep.json`) in its order, then the others by path."""
    import json

    order: dict[Path, int] = {}
    for index in sorted(root.rglob(run_schema.SWEEP_INDEX)):
        try:
            listed = json.loads(index.read_text()).get("runs", [])
        except (OSError, ValueError):
            log.warning("%s: unreadable sweep index; runs ordered by path", index)
            continue
        for entry in listed:
            order.setdefault(index.parent / str(entry.get("name", "")), len(order))
    return lambda folder: (order.get(folder, len(order)), str(folder))


def find_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Every finished run at or below `paths` (a run folder, or a folder of runs at any depth), in path order.

    Unfinished runs (no `summary.json` yet) are skipped with a warning; a path without any run is an error.
    """
    runs: list[RunRecord] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such run folder or folder of runs")
        if (path / run_schema.SUMMARY_JSON).exists():
            folders = [path]
        else:
            folders = sorted((p.parent for p in path.rglob(run_schema.SUMMARY_JSON)), key=_plan_order(path))
        unfinished = sorted(p.parent for p in path.rglob(run_schema.CONFIG_TOML)
                            if not (p.parent / run_schema.SUMMARY_JSON).exists())
        if unfinished:
            log.warning("%s: %d unfinished run(s) left out (%s)", path, len(unfinished),
                        ", ".join(str(p) for p in unfinished[:3]) + (" …" if len(unfinished) > 3 else ""))
        if not folders:
            raise InputError(f"{path}: no finished run found (a run folder holds {run_schema.SUMMARY_JSON}; "
                             "train one with `mlpl train` or `mlpl sweep`)")
        runs += [read_run(p) for p in folders]
    return runs
