"""Stage two end to end on the digits world: runs, resume after a kill, store checks, evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError

from tests.conftest import free_port, make_oracle_store, run_cli

TINY = ["--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "1"]


@pytest.fixture(scope="module")
def oracle_store(digits_small, tmp_path_factory) -> Path:
    """A store whose similarities come from the labels plus noise (stands in for a teacher)."""
    return make_oracle_store(digits_small, tmp_path_factory.mktemp("store") / "store")


def test_train_an_writes_run(digits_small, tmp_path):
    out = tmp_path / "an"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", out, *TINY]) == 0
    summary = run_schema.validate(out)
    assert summary.method == "an" and summary.regime == "spml" and summary.test is not None
    assert 0 <= summary.test.map <= 100 and summary.best_epoch in (1, 2)
    records = run_schema.read_metrics(out)
    assert [(r["epoch"], r["split"]) for r in records][:4] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert (out / "best.safetensors").exists() and (out / "last.pt").exists()


def test_best_val_is_the_epoch_record_not_predicted_again(digits_small, tmp_path, monkeypatch):
    """The summary's val metrics are the best epoch's record; val is predicted once per epoch, test once."""
    from mlpl.stages.train import loop

    calls: list[str] = []
    real = loop.predict

    def counting(model, ds, split, *args, **kwargs):
        calls.append(split)
        return real(model, ds, split, *args, **kwargs)

    monkeypatch.setattr(loop, "predict", counting)
    out = tmp_path / "an"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", out, *TINY]) == 0
    assert calls == ["val", "val", "test"]
    summary = run_schema.validate(out)
    best = [r for r in run_schema.read_metrics(out) if r["split"] == "val" and r["epoch"] == summary.best_epoch]
    assert len(best) == 1
    assert summary.val.map == best[0]["map"] and summary.val.cf1 == best[0]["cf1"]
    assert summary.val.map == max(r["map"] for r in run_schema.read_metrics(out) if r["split"] == "val")


def test_train_aevlp_with_store_logs_pseudo_quality(digits_small, oracle_store, tmp_path):
    out = tmp_path / "aevlp"
    code = run_cli(["train", "--dataset", digits_small, "--method", "aevlp", "--pseudo-store", oracle_store,
                    "--out", out, *TINY])
    assert code == 0
    train_rec = [r for r in run_schema.read_metrics(out) if r["split"] == "train"]
    # the oracle store makes DAMP's positive pseudo-labels precise
    assert all(r["pseudo_precision"] > 90 for r in train_rec)
    assert run_schema.read_summary(out).pseudo_quality["precision"] > 90


def test_aevlp_without_store_is_refused(digits_small, tmp_path, capsys):
    assert run_cli(["train", "--dataset", digits_small, "--method", "aevlp", "--out", tmp_path / "r", *TINY]) == 2
    assert "--pseudo-store" in capsys.readouterr().err


def test_mismatched_store_is_refused(digits_small, oracle_store, tmp_path, capsys):
    other = tmp_path / "other"
    assert run_cli(["prepare", "--dataset", "digits", "--out", other, "--size", "200", "--test-size", "50",
                    "--rows-per-shard", "64", "--seed", "1"]) == 0
    assert run_cli(["train", "--dataset", other, "--method", "aevlp", "--pseudo-store", oracle_store,
                    "--out", tmp_path / "r", *TINY]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_incomplete_store_is_refused(digits_small, oracle_store, tmp_path):
    import shutil

    from mlpl.schemas.store import open_store
    from mlpl.stages.train.config import TrainCfg
    from mlpl.stages.train.loop import Trainer

    copy = tmp_path / "store"
    shutil.copytree(oracle_store, copy)
    open_store(copy, mode="r+").done[0, 0] = 0
    cfg = TrainCfg(method="aevlp", dataset=str(digits_small), out=str(tmp_path / "r"), pseudo="damp",
                   pseudo_store=str(copy), family="digits", loss="gpr")
    with pytest.raises(InputError, match="incomplete"):
        Trainer(cfg)


def test_resume_after_kill_gives_same_result(digits_small, tmp_path):
    args = ["--dataset", str(digits_small), "--method", "an", "--epochs", "4", "--batch-size", "16",
            "--image-size", "32", "--workers", "1", "--seed", "3"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "mlpl.cli", "train", *args]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--out", str(ref)], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "last.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run([*cmd, "--out", str(killed)], check=True, env=env, capture_output=True)
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a == b
    val_a = [r for r in run_schema.read_metrics(ref) if r["split"] == "val"]
    val_b = [r for r in run_schema.read_metrics(killed) if r["split"] == "val"]
    assert val_a == val_b


def test_evaluate_command(digits_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", "--dataset", digits_small, "--method", "bce-full", "--out", out, *TINY]) == 0
    capsys.readouterr()
    assert run_cli(["evaluate", out, "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "map" in printed and "hamming" in printed
    result = json.loads((out / "eval-test.json").read_text())
    summary = run_schema.read_summary(out)
    assert result["metrics"]["map"] == pytest.approx(summary.test.map, abs=1e-6)


def test_torchrun_two_ranks_train(digits_small, tmp_path):
    """DistributedDataParallel under torchrun on CPU (gloo): equal batches per rank, one summary."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "mlpl.cli", "train",
           "--dataset", str(digits_small), "--method", "an", "--out", str(out), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("an on digits: best epoch") == 1  # rank 0 alone prints the result
    summary = run_schema.validate(out)
    assert summary.epochs_run == 2
    train_rec = [r for r in run_schema.read_metrics(out) if r["split"] == "train"]
    assert len(train_rec) == 2  # rank 0 alone writes the log
