"""Resuming a killed training run: the epoch killed between its metrics lines and its checkpoint is trained
again and its metrics lines replace, not repeat, the ones it had written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

ARGS = ["--method", "an", "--epochs", "3", "--batch-size", "32", "--image-size", "32", "--workers", "0", "--seed", "5"]

# Runs `mlpl train` and SIGKILLs itself when the checkpoint of epoch 2 is about to be written: after that
# epoch's lines were appended to metrics.jsonl, before last.pt holds it.
KILLED_AT_CHECKPOINT = """
import os, signal, sys
import mlpl.schemas.state as state
write = state.save_tensors
def save_tensors(path, tensors, metadata=None):
    if '"epoch", 2]' in (metadata or {}).get("mlpl.state", ""):
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, tensors, metadata)
state.save_tensors = save_tensors
from mlpl.cli import main
main(sys.argv[1:])
"""


def _lines(run: Path) -> list[tuple[int, str]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["split"]) for r in records]


def _without_times(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_kill_between_metrics_and_checkpoint_keeps_each_epoch_once(digits_small, tmp_path):
    killed = tmp_path / "killed"
    args = ["train", "--dataset", str(digits_small), "--out", str(killed), *ARGS]
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_CHECKPOINT, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _lines(killed) == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]  # epoch 2 has no checkpoint
    assert run_cli(args) == 0
    assert _lines(killed) == [(1, "train"), (1, "val"), (2, "train"), (2, "val"), (3, "train"), (3, "val"),
                              (json.loads((killed / "summary.json").read_text())["best_epoch"], "test")]
    reference = tmp_path / "reference"
    assert run_cli(["train", "--dataset", str(digits_small), "--out", str(reference), *ARGS]) == 0
    assert _without_times(killed) == _without_times(reference)
