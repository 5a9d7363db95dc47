"""Experiment loggers besides `metrics.jsonl` (which stays the source of truth): tensorboard, csv, wandb.

A logger receives each epoch's lines as the run writes them to `metrics.jsonl`, and at the end the run's
settings (hyperparameters) with its final metrics. Only rank 0 logs. wandb is an optional extra
(`pip install 'mlpl-scarce[wandb]'`) and logs offline unless `WANDB_MODE` says otherwise, so it works
without a network; `wandb sync` uploads later.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlpl.schemas.errors import InputError
from mlpl.stages.registry import Registry

log = logging.getLogger(__name__)


class RunLogger(Protocol):
    def log_epoch(self, record: dict[str, Any]) -> None:
        """One `metrics.jsonl` line: {"epoch", "split", metric...}."""

    def finish(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        """The run's settings (scalars) and its final metrics; closes the logger."""


@dataclass(frozen=True)
class LoggerInfo:
    """A registered logger.

    Attributes:
        name: `--logger` value.
        description: one line.
        create: `create(run_folder, run_name) -> RunLogger`.
        module: the package it needs (checked before the run starts).
        install: how to get that package.
    """

    name: str
    description: str
    create: Callable[[Path, str], RunLogger]
    module: str
    install: str


LOGGERS: Registry[LoggerInfo] = Registry("logger")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in ("epoch", "split") and isinstance(v, int | float) and not isinstance(v, bool)}


class TensorboardLogger:
    """Scalars per epoch under `<split>/<metric>` (pseudo-label quality included), hparams at the end."""

    def __init__(self, folder: Path, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(f"{record['split']}/{key}", value, int(record["epoch"]))

    def finish(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.close()


class CsvLogger:
    """`metrics.csv` in long form: epoch, split, metric, value (one line per number)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / "metrics.csv"
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if self.path.stat().st_size == 0:
            self.writer.writerow(["epoch", "split", "metric", "value"])

    def log_epoch(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.writerow([record["epoch"], record["split"], key, value])
        self.file.flush()

    def finish(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        self.file.close()


class WandbLogger:
    """A wandb run in the run folder, offline unless `WANDB_MODE` is set."""

    def __init__(self, folder: Path, name: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(folder), name=name, project=os.environ.get("WANDB_PROJECT", "mlpl"),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.run.log({f"{record['split']}/{k}": v for k, v in _scalars(record).items()}, step=int(record["epoch"]))

    def finish(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        self.run.config.update(hparams, allow_val_change=True)
        self.run.summary.update(final)
        self.run.finish()


LOGGERS.register(LoggerInfo("tensorboard", "torch.utils.tensorboard event files in RUN/tensorboard",
                            TensorboardLogger, "tensorboard", "pip install tensorboard"))
LOGGERS.register(LoggerInfo("csv", "RUN/metrics.csv, one line per epoch, split and metric", CsvLogger, "csv",
                            "(standard library)"))
LOGGERS.register(LoggerInfo("wandb", "Weights & Biases, offline unless WANDB_MODE says otherwise", WandbLogger,
                            "wandb", "pip install 'mlpl-scarce[wandb]'"))


def check_loggers(names: tuple[str, ...] | list[str]) -> None:
    """Every named logger is registered and its package importable (before any run folder is written)."""
    for name in names:
        info = LOGGERS.get(name, option="--logger")
        if importlib.util.find_spec(info.module) is None:
            raise InputError(f"--logger {name}: the {info.module!r} package is not installed; {info.install}")


class Loggers:
    """The run's loggers together (none on ranks other than 0)."""

    def __init__(self, names: tuple[str, ...] | list[str], folder: Path, name: str, active: bool = True) -> None:
        check_loggers(names)
        self.loggers = [LOGGERS.get(n).create(folder, name) for n in names] if active else []

    def log_epoch(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def finish(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.finish(hparams, final)
