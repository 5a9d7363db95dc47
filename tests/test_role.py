"""ROLE (docs/methods.md §3.2): the `role` label state (learnable estimator g) and the `role` loss."""

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
from mlpl.stages.train.labelstate.role import initial_logits
from mlpl.stages.train.losses import EpochState, create_loss_cfg, get_loss_info

from tests.conftest import free_port

EPS = 1e-5
E1 = EpochState(epoch=1, num_epochs=10)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def nlog(x: float) -> float:
    return -math.log(x + EPS)


def make_state(observed: np.ndarray, seed: int = 0, **overrides):
    ctx = LabelStateContext(observed=np.asarray(observed, dtype=np.int8), family="voc", seed=seed,
                            device=torch.device("cpu"))
    return create_label_state("role", ctx, overrides)


# --- initialisation -------------------------------------------------------------------------------------

def test_initial_estimates_follow_the_observed_labels() -> None:
    rng = np.random.RandomState(1)
    observed = rng.choice([-1, 0, 0, 0, 1], size=(2000, 6)).astype(np.int8)
    state = make_state(observed, seed=7)
    g = state.logits.detach()
    assert isinstance(state.logits, torch.nn.Parameter) and state.logits.requires_grad
    assert g.dtype == torch.float32 and g.device.type == "cpu" and tuple(g.shape) == (2000, 6)
    obs = torch.from_numpy(observed)
    assert torch.all(g[obs == 1] == torch.tensor(logit(0.995), dtype=torch.float32))
    assert torch.all(g[obs == -1] == torch.tensor(logit(0.005), dtype=torch.float32))
    unknown = g[obs == 0]
    bound = logit(0.6)
    assert unknown.min() >= -bound and unknown.max() <= bound
    # uniform on [−bound, bound]: reaches close to both ends, mean near 0, a quarter below −bound/2
    assert unknown.min() < -bound + 0.01 and unknown.max() > bound - 0.01
    assert abs(unknown.mean().item()) < 0.02
    assert (unknown < -bound / 2).float().mean().item() == pytest.approx(0.25, abs=0.02)
    estimates = state.labels()
    assert estimates[observed == 0].min() >= 0.4 - 1e-6 and estimates[observed == 0].max() <= 0.6 + 1e-6


def test_initialisation_is_seeded() -> None:
    observed = np.zeros((50, 4), dtype=np.int8)
    assert torch.equal(make_state(observed, seed=3).logits, make_state(observed, seed=3).logits)
    assert not torch.equal(make_state(observed, seed=3).logits, make_state(observed, seed=4).logits)
    assert torch.equal(initial_logits(observed, 3), make_state(observed, seed=3).logits.detach())


def test_param_group_gets_the_estimator_multiplier() -> None:
    state = make_state(np.zeros((4, 3), dtype=np.int8))
    (group,) = state.param_groups(1e-5)
    assert group["params"] == [state.logits] and group["lr"] == pytest.approx(1e-4)
    (group,) = make_state(np.zeros((4, 3), dtype=np.int8), lr_mult=3.0).param_groups(2e-3)
    assert group["lr"] == pytest.approx(6e-3)
    with pytest.raises(InputError, match="lr_mult"):
        create_label_state_cfg("role", "voc", {"lr_mult": 0})


# --- the loss -------------------------------------------------------------------------------------------

LOGITS = [[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]
G_BATCH = [[1.0, -0.3, 0.2], [-2.0, 0.4, 0.0]]  # g of rows 2 and 0, the batch
OBSERVED_BATCH = [[1, 0, 0], [0, -1, 1]]


def state_with_batch() -> tuple[object, torch.Tensor]:
    """A 4-row state whose rows 2 and 0 hold G_BATCH and OBSERVED_BATCH; returns it and the batch rows."""
    observed = np.zeros((4, 3), dtype=np.int8)
    observed[2], observed[0] = OBSERVED_BATCH
    state = make_state(observed)
    with torch.no_grad():
        state.logits[2] = torch.tensor(G_BATCH[0])
        state.logits[0] = torch.tensor(G_BATCH[1])
    return state, torch.tensor([2, 0])


def test_role_loss_golden_value_and_gradients() -> None:
    m, b_size, c_size = 1.5, 2, 3
    state, rows = state_with_batch()
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    out = get_loss_info("role").fn(logits=logits, observed=torch.tensor(OBSERVED_BATCH), pseudo=None, epoch=E1,
                                   cfg=create_loss_cfg("role", "voc", {}),
                                   state=state.batch_state(rows, torch.device("cpu")))
    p = [[sig(x) for x in row] for row in LOGITS]
    q = [[sig(float(np.float32(x))) for x in row] for row in G_BATCH]
    cells = []
    for b in range(b_size):
        row = []
        for c in range(c_size):
            y, pb, qb = OBSERVED_BATCH[b][c], p[b][c], q[b][c]
            obs1 = nlog(pb) if y == 1 else nlog(1 - pb) if y == -1 else 0.0
            obs2 = nlog(qb) if y == 1 else nlog(1 - qb) if y == -1 else 0.0
            cross1 = qb * nlog(pb) + (1 - qb) * nlog(1 - pb)
            cross2 = pb * nlog(qb) + (1 - pb) * nlog(1 - qb)
            row.append(0.5 * (obs1 + obs2) + 0.5 * (cross1 + cross2))
        cells.append(row)
    sum_p = sum(sum(r) for r in p) / b_size
    sum_q = sum(sum(r) for r in q) / b_size
    reg = 0.5 * ((sum_p - m) ** 2 / c_size ** 2 + (sum_q - m) ** 2 / c_size ** 2)
    for got, want in zip(out.cells.tolist(), cells):
        assert got == pytest.approx(want, rel=1e-5)
    assert out.regulariser.item() == pytest.approx(reg, rel=1e-5)
    assert out.total.item() == pytest.approx(sum(sum(r) for r in cells) / 6 + reg, rel=1e-5)

    out.total.backward()
    # each player is trained by its own terms only: the other's output is detached in the cross terms
    for b in range(b_size):
        for c in range(c_size):
            y, pb, qb = OBSERVED_BATCH[b][c], p[b][c], q[b][c]
            d_obs_p = -1 / (pb + EPS) if y == 1 else 1 / (1 - pb + EPS) if y == -1 else 0.0
            d_obs_q = -1 / (qb + EPS) if y == 1 else 1 / (1 - qb + EPS) if y == -1 else 0.0
            d_cross_p = -qb / (pb + EPS) + (1 - qb) / (1 - pb + EPS)
            d_cross_q = -pb / (qb + EPS) + (1 - pb) / (1 - qb + EPS)
            want_p = (0.5 * (d_obs_p + d_cross_p) / 6 + (sum_p - m) / (c_size ** 2 * b_size)) * pb * (1 - pb)
            want_q = (0.5 * (d_obs_q + d_cross_q) / 6 + (sum_q - m) / (c_size ** 2 * b_size)) * qb * (1 - qb)
            assert logits.grad[b, c].item() == pytest.approx(want_p, rel=1e-4, abs=1e-9)
            assert state.logits.grad[rows[b], c].item() == pytest.approx(want_q, rel=1e-4, abs=1e-9)
    # rows outside the batch get no gradient
    assert torch.all(state.logits.grad[[1, 3]] == 0)


def test_role_loss_without_observed_negatives_is_spec_formula() -> None:
    # single-positive labels: obs1/obs2 are docs/methods.md's pos1/pos2
    logits = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    q = torch.tensor([[0.7, 0.2]], dtype=torch.float64)
    out = get_loss_info("role").fn(logits=logits, observed=torch.tensor([[0, 1]]), pseudo=None, epoch=E1,
                                   cfg=create_loss_cfg("role", "coco", {}), state={"estimate": q})
    p0, p1 = sig(1.0), sig(-0.5)
    cell0 = 0.5 * (0.7 * nlog(p0) + 0.3 * nlog(1 - p0) + p0 * nlog(0.7) + (1 - p0) * nlog(0.3))
    cell1 = 0.5 * (nlog(p1) + nlog(0.2)) + 0.5 * (0.2 * nlog(p1) + 0.8 * nlog(1 - p1)
                                                  + p1 * nlog(0.2) + (1 - p1) * nlog(0.8))
    reg = 0.5 * ((p0 + p1 - 2.9) ** 2 + (0.9 - 2.9) ** 2) / 4
    assert out.cells[0].tolist() == pytest.approx([cell0, cell1], rel=1e-9)
    assert out.total.item() == pytest.approx((cell0 + cell1) / 2 + reg, rel=1e-9)


@pytest.mark.parametrize("dataset, m", [("voc", 1.5), ("coco", 2.9), ("nus", 1.9), ("cub", 31.4),
                                        ("digits", 2.5)])
def test_role_m_per_dataset(dataset: str, m: float) -> None:
    assert create_loss_cfg("role", dataset, {}).m == m
    assert get_loss_info("role").label_states == ("role",)


def test_role_estimate_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="state estimate"):
        get_loss_info("role").fn(logits=torch.zeros(2, 3), observed=torch.zeros(2, 3, dtype=torch.long),
                                 pseudo=None, epoch=E1, cfg=create_loss_cfg("role", "voc", {}),
                                 state={"estimate": torch.zeros(2, 2)})


def test_optimiser_step_moves_the_batch_rows_only() -> None:
    state, rows = state_with_batch()
    before = state.logits.detach().clone()
    opt = torch.optim.Adam(state.param_groups(1e-3))
    out = get_loss_info("role").fn(logits=torch.tensor(LOGITS), observed=torch.tensor(OBSERVED_BATCH), pseudo=None,
                                   epoch=E1, cfg=create_loss_cfg("role", "voc", {}),
                                   state=state.batch_state(rows, torch.device("cpu")))
    out.total.backward()
    opt.step()
    moved = (state.logits.detach() != before).any(dim=1)
    assert moved.tolist() == [True, False, True, False]
    # Adam's first step moves each cell by about its lr (1e-3 · 10)
    step = (state.logits.detach() - before)[rows].abs()
    assert torch.allclose(step, torch.full_like(step, 1e-2), rtol=1e-3)


# --- persistence ----------------------------------------------------------------------------------------

def test_save_and_load_round_trip() -> None:
    observed = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.int8)
    state = make_state(observed, seed=1)
    with torch.no_grad():
        state.logits.add_(torch.linspace(-1, 1, 9).reshape(3, 3))
    saved = state.state_dict()
    assert set(saved) == {"logits"} and saved["logits"].device.type == "cpu"
    restored = make_state(observed, seed=2)
    param = restored.logits
    restored.load_state_dict(saved)
    assert restored.logits is param  # restored in place: an optimiser built before keeps training it
    assert torch.equal(restored.logits.detach(), state.logits.detach())
    assert np.allclose(restored.labels(), 1 / (1 + np.exp(-state.logits.detach().numpy())))
    assert restored.memory_bytes() == 9 * 4
    with pytest.raises(ValueError, match="lacks the estimator"):
        restored.load_state_dict({})
    with pytest.raises(ValueError, match="saved logits"):
        restored.load_state_dict({"logits": torch.zeros(2, 3)})


# --- torchrun -------------------------------------------------------------------------------------------

def test_torchrun_two_ranks_train_every_row_of_the_estimator(digits_methods, tmp_path) -> None:
    """Under DDP each rank's loss reaches only its own rows of g; the loop's sum of g's gradient over the ranks
    gives every rank (and so the state rank 0 saves) the updates of all rows, not only rank 0's."""
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "mlpl.cli", "train",
           "--dataset", str(digits_methods), "--method", "role", "--out", str(out), "--epochs", "1",
           "--batch-size", "16", "--image-size", "32", "--workers", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = open_dataset(digits_methods)
    start, stop = ds.meta.split_range("train")
    obs = ds.observations("spml")
    observed = np.zeros((stop - start, ds.meta.num_classes), dtype=np.int8)
    observed[obs.row - start] = obs.matrix(ds.meta.num_classes)
    saved = load_state(out / run_schema.LAST_STATE)["label_state"]
    moved = (saved["logits"] != initial_logits(observed, 0)).any(dim=1)
    # one epoch deals every training row to one rank; rank 0 alone would have moved about half of them
    assert moved.all(), f"{int(moved.sum())} of {len(moved)} rows trained"
