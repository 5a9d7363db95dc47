"""Metrics under torchrun: counts summed over ranks, unions combined, validation split between ranks and gathered,
one result line; two CPU processes (gloo) against one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlpl.schemas import run as run_schema

from tests.conftest import free_port, make_oracle_store, run_cli


def _collectives_worker(rank: int, world: int, port: int, out: str) -> None:
    from mlpl.stages.collectives import gather_rows, sum_over_ranks, union_over_ranks_
    from mlpl.stages.evaluate.pseudo_quality import PseudoLabelQuality

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    summed = sum_over_ranks(torch.tensor([1.5 + rank, 10.0 * (rank + 1)], dtype=torch.float64))
    table = torch.zeros(2, 3, dtype=torch.uint8)
    table[rank, rank] = 1
    union_over_ranks_(table)
    rows, probs = gather_rows(np.array([rank, rank + 2]), np.array([[rank], [rank + 2]], dtype=np.float32))
    # one rank sees row 0 with a positive pseudo-label that is right, the other row 1 with a wrong one
    quality = PseudoLabelQuality(2, 1)
    quality.update(np.array([rank]), np.array([[1]]), np.array([[1 - rank]]), np.array([[0]]))
    quality.synchronise()
    result = {"summed": summed.tolist(), "union": table.tolist(), "rows": rows.tolist(),
              "probs": probs[:, 0].tolist(), "quality": quality.compute(),
              "seen": quality.positives.seen[:, 0].tolist()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def test_collectives_sum_union_and_gather(tmp_path):
    torch.multiprocessing.spawn(_collectives_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    result = results[0]
    assert result["summed"] == [4.0, 30.0]
    assert result["union"] == [[1, 0, 0], [0, 1, 0]]
    assert result["rows"] == [0, 1, 2, 3] and result["probs"] == [0.0, 1.0, 2.0, 3.0]
    # 2 positive pseudo-labels, 1 correct, 1 true positive: the counts of both ranks, not rank 0's alone
    assert result["quality"]["precision"] == 50.0 and result["quality"]["recall"] == 100.0
    assert result["seen"] == [1, 1]


def test_eval_loader_splits_rows_between_ranks(digits_small):
    from mlpl.schemas.dataset import open_dataset
    from mlpl.stages.train.stream import StreamCfg, eval_loader

    ds = open_dataset(digits_small)
    cfg = StreamCfg(image_size=16, batch_size=16, workers=0)
    shares = [np.concatenate([b["row"].numpy() for b in eval_loader(ds, "val", cfg, rank, 2)]) for rank in (0, 1)]
    start, stop = ds.meta.split_range("val")
    assert not set(shares[0]) & set(shares[1])
    assert sorted(np.concatenate(shares).tolist()) == list(range(start, stop))


@pytest.mark.slow
def test_two_processes_match_one(digits_small, tmp_path, capsys):
    """AEVLP with accumulated DAMP pseudo-labels from an oracle store: DAMP does not depend on the model, so
    its per-epoch and accumulated quality must equal one process's exactly; the validation metrics of the
    gathered predictions must equal a one-process evaluation of the same weights."""
    store = make_oracle_store(digits_small, tmp_path / "store")
    common = ["--dataset", str(digits_small), "--pseudo-store", str(store), "--pseudo-mode", "accumulated",
              "--epochs", "2", "--image-size", "32", "--workers", "1"]
    one = tmp_path / "one"
    assert run_cli(["train", *common, "--method", "aevlp", "--batch-size", "32", "--out", one]) == 0
    # the sweep under torchrun is the same command as without it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "mlpl.cli", "sweep", *common, "--methods", "aevlp", "--seeds", "0", "--batch-size", "16",
           "--out", str(tmp_path / "sweep")]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("aevlp-seed0: test mAP") == 1  # rank 0's line only
    two = tmp_path / "sweep" / "aevlp-seed0"

    def train_lines(run: Path) -> list[dict]:
        return [r for r in run_schema.read_metrics(run) if r["split"] == "train"]

    quality_keys = [k for k in train_lines(one)[0] if k.startswith("pseudo_")]
    assert {"pseudo_precision", "pseudo_acc_recall", "pseudo_neg_precision"} <= set(quality_keys)
    for a, b in zip(train_lines(one), train_lines(two), strict=True):
        assert {k: a[k] for k in quality_keys} == {k: b[k] for k in quality_keys}
    config = (two / "config.toml").read_text()
    assert "world_size = 2" in config and "global_batch = 32" in config
    capsys.readouterr()
    assert run_cli(["evaluate", two, "--split", "val"]) == 0
    evaluated = json.loads((two / "eval-val.json").read_text())["metrics"]
    summary = run_schema.read_summary(two)
    for key in run_schema.METRIC_KEYS:
        assert evaluated[key] == pytest.approx(getattr(summary.val, key), abs=1e-9)
