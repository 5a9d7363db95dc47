"""The `apl` label state: asymmetric pseudo-labelling's frozen soft negatives (docs/methods.md §3.3)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import open_dataset
from mlpl.schemas.errors import InputError
from mlpl.schemas.state import load_state
from mlpl.stages.train.labelstate import LabelStateContext, create_label_state, create_label_state_cfg
from mlpl.stages.train.losses import EpochState

from tests.conftest import free_port, run_cli

N, C = 12, 3


def observed_matrix() -> np.ndarray:
    """Class 0: row 0 observed positive (11 unknown); class 1: rows 1, 2 positive, row 3 negative (9 unknown);
    class 2: nothing observed (12 unknown)."""
    obs = np.zeros((N, C), dtype=np.int8)
    obs[0, 0] = 1
    obs[1, 1] = obs[2, 1] = 1
    obs[3, 1] = -1
    return obs


def make_state(num_epochs: int = 4, warmup: int = 2, **overrides):
    ctx = LabelStateContext(observed=observed_matrix(), family="voc", seed=0, device=torch.device("cpu"),
                            num_epochs=num_epochs)
    return create_label_state("apl", ctx, {"warmup": warmup, **overrides})


def predictions() -> np.ndarray:
    """Distinct scores per class in a scrambled row order; the observed cells score lowest of all, so a
    selection that forgot to skip them would take them first."""
    rng = np.random.RandomState(3)
    probs = np.stack([rng.permutation(N) for _ in range(C)], axis=1).astype(np.float32) / N + 0.03
    obs = observed_matrix()
    probs[obs != 0] = 0.001
    return probs


def lowest_unknown(probs: np.ndarray, taken: set[tuple[int, int]], c: int, k: int) -> list[int]:
    """The k rows of class c with the lowest scores among unknown cells not yet taken (ties by row)."""
    obs = observed_matrix()
    candidates = [r for r in range(N) if obs[r, c] == 0 and (r, c) not in taken]
    return sorted(candidates, key=lambda r: (float(probs[r, c]), r))[:k]


def flagged(state) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(state.tables["soft_negative"].data.numpy()))}


def epoch(e: int, total: int = 4) -> EpochState:
    return EpochState(epoch=e, num_epochs=total)


def test_quota_is_ninety_percent_of_unknown_over_the_selection_epochs() -> None:
    state = make_state(num_epochs=4, warmup=2)
    assert state.unknown_at_start.tolist() == [11, 9, 12]
    # int(0.9·U_c/(E − warmup)) with E − warmup = 2
    expected = [int(0.9 * u / 2) for u in (11, 9, 12)]
    assert expected == [4, 4, 5]
    assert state.quota(4).tolist() == expected
    assert make_state(num_epochs=10, warmup=5).quota(10).tolist() == [int(0.9 * u / 5) for u in (11, 9, 12)]
    assert make_state(num_epochs=4, warmup=2, proportion=0.5).quota(4).tolist() == [2, 2, 3]


def test_selection_epochs_are_warmup_to_the_one_before_last() -> None:
    state = make_state(num_epochs=4, warmup=2)
    assert [state.wants_train_predictions(epoch(e)) for e in (1, 2, 3, 4)] == [False, True, True, False]
    never = make_state(num_epochs=4, warmup=4)
    assert not any(never.wants_train_predictions(epoch(e)) for e in (1, 2, 3, 4))
    assert never.quota(4).tolist() == [0, 0, 0]
    assert make_state(num_epochs=3, warmup=5).quota(3).tolist() == [0, 0, 0]


def test_nothing_is_selected_before_warmup_or_after_the_last_epoch() -> None:
    state = make_state()
    record = state.end_epoch(epoch=epoch(1), rows=np.arange(N), probs=predictions())
    assert flagged(state) == set() and record["soft_negatives"] == 0
    state.end_epoch(epoch=epoch(4), rows=np.arange(N), probs=predictions())
    assert flagged(state) == set()
    assert not state.batch_state(torch.arange(N), torch.device("cpu"))["soft_negative"].any()


def test_lowest_scores_become_frozen_soft_negatives_and_are_never_reselected() -> None:
    state = make_state()
    probs = predictions()
    record = state.end_epoch(epoch=epoch(2), rows=np.arange(N), probs=probs)
    first: set[tuple[int, int]] = set()
    for c, k in enumerate((4, 4, 5)):
        first |= {(r, c) for r in lowest_unknown(probs, set(), c, k)}
    assert flagged(state) == first
    assert record == {"soft_negatives_added": 13.0, "soft_negatives": 13.0,
                      "soft_negative_share": pytest.approx(13 / 32)}

    # the next selection sees lower scores everywhere (same order): it takes the next-lowest cells, and the
    # targets chosen before stay at their first values
    later = probs * 0.5
    record = state.end_epoch(epoch=epoch(3), rows=np.arange(N), probs=later)
    second: set[tuple[int, int]] = set()
    for c, k in enumerate((4, 4, 5)):
        second |= {(r, c) for r in lowest_unknown(later, first, c, k)}
    assert not first & second
    assert flagged(state) == first | second
    assert record["soft_negatives_added"] == 13.0 and record["soft_negatives"] == 26.0
    target = state.tables["target"].data
    assert target.dtype == torch.float16
    for r, c in first:
        assert target[r, c].item() == float(np.float16(probs[r, c]))
    for r, c in second:
        assert target[r, c].item() == float(np.float16(later[r, c]))
    # observed cells are never soft negatives, whatever they score
    obs = observed_matrix()
    assert all(obs[r, c] == 0 for r, c in flagged(state))
    # unflagged cells keep target 0
    mask = state.tables["soft_negative"].data
    assert (target[~mask] == 0).all()


def test_selection_follows_rows_not_positions() -> None:
    probs = predictions()
    in_order = make_state()
    in_order.end_epoch(epoch=epoch(2), rows=np.arange(N), probs=probs)
    order = np.random.RandomState(0).permutation(N)
    shuffled = make_state()
    shuffled.end_epoch(epoch=epoch(2), rows=order, probs=probs[order])
    assert flagged(shuffled) == flagged(in_order)
    assert torch.equal(shuffled.tables["target"].data, in_order.tables["target"].data)


def test_proportion_one_over_one_round_takes_every_unknown_cell() -> None:
    state = make_state(num_epochs=2, warmup=1, proportion=1.0)
    assert state.quota(2).tolist() == [11, 9, 12]
    record = state.end_epoch(epoch=epoch(1, 2), rows=np.arange(N), probs=predictions())
    assert len(flagged(state)) == 32 and record["soft_negative_share"] == 1.0


def test_batch_state_and_labels() -> None:
    state = make_state()
    probs = predictions()
    state.end_epoch(epoch=epoch(2), rows=np.arange(N), probs=probs)
    rows = torch.tensor([5, 0, 3])
    view = state.batch_state(rows, torch.device("cpu"))
    mask = state.tables["soft_negative"].data
    assert view["soft_negative"].dtype == torch.bool
    assert torch.equal(view["soft_negative"], mask[rows])
    assert torch.equal(view["target"], state.tables["target"].data[rows].float())
    labels = state.labels()
    obs = observed_matrix()
    assert (labels[obs == 1] == 1).all() and (labels[obs == -1] == 0).all()
    soft = mask.numpy()
    assert np.array_equal(labels[soft], probs[soft].astype(np.float16).astype(np.float32))
    assert np.isnan(labels[(obs == 0) & ~soft]).all()


def test_save_and_load_round_trip() -> None:
    state = make_state()
    state.end_epoch(epoch=epoch(2), rows=np.arange(N), probs=predictions())
    saved = state.state_dict()
    restored = make_state()
    restored.load_state_dict(saved)
    assert flagged(restored) == flagged(state)
    assert torch.equal(restored.tables["target"].data, state.tables["target"].data)
    # the restored state goes on selecting from the cells still unknown
    state.end_epoch(epoch=epoch(3), rows=np.arange(N), probs=predictions() * 0.5)
    restored.end_epoch(epoch=epoch(3), rows=np.arange(N), probs=predictions() * 0.5)
    assert flagged(restored) == flagged(state) and len(flagged(state)) == 26
    with pytest.raises(ValueError, match="lacks tables"):
        make_state().load_state_dict({"target": saved["target"]})


def test_selection_epoch_without_predictions_is_a_wiring_error() -> None:
    with pytest.raises(ValueError, match="needs the training predictions"):
        make_state().end_epoch(epoch=epoch(2), rows=None, probs=None)


def test_config_per_dataset_and_checks() -> None:
    warmups = {family: create_label_state_cfg("apl", family, {}).warmup
               for family in ("voc", "coco", "nus", "cub", "digits")}
    assert warmups == {"voc": 5, "coco": 5, "nus": 4, "cub": 3, "digits": 5}
    assert create_label_state_cfg("apl", "voc", {}).proportion == 0.9
    with pytest.raises(InputError, match="warmup"):
        create_label_state_cfg("apl", "voc", {"warmup": 0})
    with pytest.raises(InputError, match="proportion"):
        create_label_state_cfg("apl", "voc", {"proportion": 1.5})


def test_em_apl_trains_on_soft_negatives_end_to_end(digits_methods, tmp_path) -> None:
    """Warm-up 1 over 2 epochs: soft negatives chosen after epoch 1 are trained on in epoch 2; resume is a no-op."""
    preset = tmp_path / "apl.toml"
    preset.write_text("[label_state_params]\nwarmup = 1\n")
    out = tmp_path / "run"
    args = ["train", "--dataset", digits_methods, "--method", "em-apl", "--out", out, "--preset", preset,
            "--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "3"]
    assert run_cli(args) == 0
    train = {r["epoch"]: r for r in run_schema.read_metrics(out) if r["split"] == "train"}
    ds = open_dataset(digits_methods)
    start, stop = ds.meta.split_range("train")
    obs = ds.observations("spml")
    observed = np.zeros((stop - start, ds.meta.num_classes), dtype=np.int8)
    observed[obs.row - start] = obs.matrix(ds.meta.num_classes)
    quota = sum(int(0.9 * int(u) / 1) for u in (observed == 0).sum(axis=0))
    assert train[1]["state_soft_negatives_added"] == quota > 0
    assert train[2]["state_soft_negatives_added"] == 0  # the last epoch selects nothing
    assert train[2]["state_soft_negatives"] == quota
    assert math.isfinite(train[2]["loss"])
    saved = load_state(out / run_schema.LAST_STATE)["label_state"]
    assert int(saved["soft_negative"].sum()) == quota
    assert run_cli(args) == 0


def test_torchrun_two_ranks_share_one_selection(digits_methods, tmp_path) -> None:
    """Under DDP every rank selects from the full training predictions and takes rank 0's selection."""
    preset = tmp_path / "apl.toml"
    preset.write_text("[label_state_params]\nwarmup = 1\n")
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "mlpl.cli", "train",
           "--dataset", str(digits_methods), "--method", "em-apl", "--out", str(out), "--preset", str(preset),
           "--epochs", "2", "--batch-size", "16", "--image-size", "32", "--workers", "1", "--max-batches", "2",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = {r["epoch"]: r for r in run_schema.read_metrics(out) if r["split"] == "train"}
    assert train[1]["state_soft_negatives_added"] > 0
    assert train[2]["state_soft_negatives"] == train[1]["state_soft_negatives"]
    saved = load_state(out / run_schema.LAST_STATE)["label_state"]
    assert int(saved["soft_negative"].sum()) == train[1]["state_soft_negatives"]
