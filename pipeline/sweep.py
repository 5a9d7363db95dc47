"""Experiments over one store: every combination of methods × regimes × `--grid` values × seeds, in one process.

A sweep plans every run first and resolves each run's configuration, typed configs included, so a bad
`--set`/`--grid` key or value fails before any run folder is written. Runs then go one after another with
the prepared dataset and the store opened once; a run folder is named by its settings
(`aevlp-spml-delta_neg=0.3-seed0`), a finished run is read instead of retrained, an interrupted one resumes
from its `last.pt`, and a failing run is reported while the rest continue.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpl.schemas.errors import InputError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its method, seed, regime (None: the method's), `--grid` settings and folder name."""

    method: str
    seed: int
    regime: str | None
    settings: tuple[tuple[str, Any], ...] = ()
    name: str = ""


@dataclass
class SweepResult:
    """What a sweep did: finished run folders (trained now or read), and failures with their messages."""

    trained: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-2` → (0, 1, 2); `0,3,5`; `0-2,7` (inclusive ranges, order kept, duplicates dropped)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise InputError(f"--seeds: {text!r}; expected seeds or inclusive ranges like 0-2 or 0,3,5")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        seeds += range(first, last + 1)
    return tuple(dict.fromkeys(seeds))


def _slug(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._+]+", "_", text)


def plan(methods: list[str], seeds: tuple[int, ...], regimes: list[str],
         grids: list[tuple[str, list[Any]]]) -> list[SweepPoint]:
    """Every combination, in the order method → regime → grid values → seed; folder names from the settings."""
    short = {key: key.rpartition(".")[2] for key, _ in grids}
    if len(set(short.values())) < len(short):  # two sections share a key name: keep the section in the name
        short = {key: key for key in short}
    points = []
    for method in methods:
        for regime in regimes or [None]:
            for values in itertools.product(*(v for _, v in grids)):
                settings = tuple(zip((k for k, _ in grids), values))
                parts = [method] + ([regime] if regime else []) + [f"{short[k]}={_slug(v)}" for k, v in settings]
                for seed in seeds:
                    points.append(SweepPoint(method, seed, regime, settings, "-".join(parts + [f"seed{seed}"])))
    return points


Echo = Callable[[str], None]


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_sweep(points: list[SweepPoint], resolve: Callable[[SweepPoint], Any], train: Callable[[Any], Any],
              finished: Callable[[Any], bool], echo: Echo,
              planned: Callable[[list[SweepPoint]], None] | None = None) -> SweepResult:
    """Resolve every point's configuration (raising on the first bad one, before any run), then run each.

    Args:
        resolve: point → its resolved, checked configuration (the run folder is `cfg.out`).
        train: cfg → the run's summary (trains, resumes from `last.pt`, or reads a finished run's summary; refuses
            a folder holding a run of another configuration).
        finished: cfg → whether its folder holds a finished run (read, not retrained).
        echo: where the progress line of each run goes (rank 0's console).
        planned: called with the points once every configuration is resolved, before the first run.
    """
    configs = [resolve(point) for point in points]
    if planned is not None:
        planned(points)
    result = SweepResult()
    spent, trained_count = 0.0, 0
    for index, (point, cfg) in enumerate(zip(points, configs), start=1):
        t0 = time.time()
        try:
            reused = finished(cfg)
            summary = train(cfg)
        except Exception as error:  # one run's failure must not end the others (the message says which)
            log.debug("run %s failed", point.name, exc_info=True)
            message = f"{type(error).__name__}: {error}" if not isinstance(error, InputError) else str(error)
            result.failed.append((point.name, message))
            echo(f"[{index}/{len(points)}] {point.name}: FAILED ({message})")
            continue
        seconds = time.time() - t0
        (result.reused if reused else result.trained).append(Path(cfg.out))
        if not reused:
            spent, trained_count = spent + seconds, trained_count + 1
        remaining = len(points) - index
        eta = f", ETA {_eta(spent / trained_count * remaining)}" if trained_count and remaining else ""
        shown = summary.test or summary.val
        score = f"{'test' if summary.test else 'val'} mAP {shown.map:.2f}" if shown else "no val or test split"
        how = "finished earlier" if reused else f"{seconds:.1f} s"
        echo(f"[{index}/{len(points)}] {point.name}: {score}, best epoch {summary.best_epoch} ({how}){eta}")
    return result


class SweepRunner:
    """Resolves, trains and reads the runs of one sweep, with the dataset and the store opened once."""

    def __init__(self, ds_dir: Path, out: Path, base: dict[str, Any], preset: Path | None,
                 sets: list[tuple[str, Any]], echo: Echo) -> None:
        """`base`: overrides every run gets (the `mlpl train` options); `sets`: `--set` values; `echo`: the
        console (rank 0 only)."""
        from mlpl.schemas.dataset import DATASET_JSON, DatasetMeta
        from mlpl.stages.runtime import world_from_env

        self.ds_dir, self.out = ds_dir.resolve(), out
        self.meta = DatasetMeta.from_json(self.ds_dir / DATASET_JSON)
        self.base, self.preset, self.sets, self._echo = base, preset, sets, echo
        self.rank = world_from_env().rank
        self.opened: dict[Any, Any] = {}

    def run(self, points: list[SweepPoint]) -> SweepResult:
        """Every point, in order (see `run_sweep`); the sweep folder's index lists them for reports."""
        return run_sweep(points, self.resolve, self.train, self.finished, self.echo, self.write_index)

    def write_index(self, points: list[SweepPoint]) -> None:
        """`sweep.json` in the sweep folder: its runs in plan order with their settings (`mlpl report` keeps
        that order)."""
        from mlpl.schemas.run import SWEEP_INDEX, write_json_atomic

        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        index = {"runs": [{"name": p.name, "method": p.method, "seed": p.seed, "regime": p.regime,
                           "settings": dict(p.settings)} for p in points]}
        known = json.loads((self.out / SWEEP_INDEX).read_text()) if (self.out / SWEEP_INDEX).exists() else {}
        names = {r["name"] for r in index["runs"]}
        # a folder swept twice with other settings keeps listing the earlier runs, after this sweep's
        index["runs"] += [r for r in known.get("runs", []) if r.get("name") not in names]
        write_json_atomic(self.out / SWEEP_INDEX, index)

    def echo(self, line: str) -> None:
        if self.rank == 0:
            self._echo(line)

    def resolve(self, point: Any) -> Any:
        from mlpl.config import resolve_train_cfg
        from mlpl.overrides import nest
        from mlpl.stages.train.record import check_run

        overrides = {**self.base, "seed": point.seed, **({"regime": point.regime} if point.regime else {}),
                     **nest([*self.sets, *point.settings])}
        try:
            cfg = resolve_train_cfg(point.method, str(self.ds_dir), self.meta.name, str(self.out / point.name),
                                    self.preset, overrides, self.meta.family or "")
            check_run(cfg, self.meta.expected_positives)
            if cfg.regime not in self.meta.regimes:
                raise InputError(f"regime {cfg.regime!r} is not prepared in {self.ds_dir} (it has "
                                 f"{list(self.meta.regimes)}); add it with `mlpl observe`")
        except InputError as error:
            raise InputError(f"sweep run {point.name}: {error}") from None
        return cfg

    def finished(self, cfg: Any) -> bool:
        from mlpl.schemas.run import SUMMARY_JSON

        return (Path(cfg.out) / SUMMARY_JSON).exists()

    def train(self, cfg: Any) -> Any:
        from mlpl.progress import progress_bar
        from mlpl.stages.train.loop import Trainer

        with progress_bar() as bar:
            return Trainer(cfg, progress=bar, opened=self.opened).run()
