"""Large Loss Matters (docs/methods.md §3.4): golden values of `ll-r`, `ll-ct`, `ll-cp`, the `ll-cp` label state and the
`ll-ct` pseudo-labeller (docs/methods.md §4.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.state import load_state
from mlpl.stages.train.labelstate import LabelStateContext, create_label_state, get_label_state_info
from mlpl.stages.train.losses import EpochState, create_loss_cfg, get_loss_info
from mlpl.stages.train.losses.large_loss import large_loss_count, select_large_losses
from mlpl.stages.train.pseudolabels import create_pseudo_cfg, get_pseudolabeller_info

from tests.conftest import run_cli

# Expected values are computed here from docs/methods.md §3.4 with `math`, independently of the code.


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def bce_logits(s: float, target: int) -> float:
    """BCE-with-logits of one cell: −t·log σ(s) − (1−t)·log(1−σ(s))."""
    return softplus(s) - target * s


# B = 2, C = 5 (10 cells). Unknown cells' logits: 1.0 (twice: a tie), 0.5, 0.0, −1.0, −2.0. The observed
# negatives (logits 3 and 4) and the observed positive at logit −3 have larger losses than any unknown cell
# and must never be selected.
LOGITS = [[2.0, 1.0, -1.0, 3.0, 0.5],
          [1.0, -2.0, 4.0, -3.0, 0.0]]
OBSERVED = [[1, 0, 0, -1, 0],
            [0, 0, -1, 1, 0]]
UNKNOWN_BY_LOSS = [(0, 1), (1, 0), (0, 4), (1, 4), (0, 2), (1, 1)]  # unknown cells, largest L first (a tie first)


def expected_cells(selected: set[tuple[int, int]], mode: str) -> list[list[float]]:
    """L everywhere, except selected cells: 0 (reject) or BCE(s, 1) (correct)."""
    rows = []
    for i, (logit_row, obs_row) in enumerate(zip(LOGITS, OBSERVED)):
        row = []
        for j, (s, o) in enumerate(zip(logit_row, obs_row)):
            if (i, j) in selected:
                row.append(0.0 if mode == "reject" else bce_logits(s, 1))
            else:
                row.append(bce_logits(s, 1 if o == 1 else 0))
        rows.append(row)
    return rows


def run(name: str, epoch: int, delta: float | None = None, logits=LOGITS, observed=OBSERVED, num_epochs: int = 10):
    cfg = create_loss_cfg(name, "voc", {} if delta is None else {"delta": delta})
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    out = get_loss_info(name).fn(logits=x, observed=torch.tensor(observed), pseudo=None,
                                 epoch=EpochState(epoch, num_epochs), cfg=cfg)
    return x, out


def mask_cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in mask.nonzero().tolist()}


def assert_cells(out, expected: list[list[float]]) -> None:
    for row, expected_row in zip(out.cells.tolist(), expected):
        assert row == pytest.approx(expected_row, rel=1e-12, abs=1e-15)
    flat = [v for row in expected for v in row]
    assert out.total.item() == pytest.approx(sum(flat) / len(flat), rel=1e-12)
    assert out.regulariser.item() == 0.0


MODES = {"ll-r": ("reject", "rejected", True), "ll-ct": ("correct", "corrected", True),
         "ll-cp": ("correct", "corrected", False)}


# --- k -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_cells, epoch, delta, cumulative, k", [
    (320, 1, 0.5, True, 0),       # epoch 1: nothing
    (320, 1, 0.1, False, 0),      # LL-Cp too
    (320, 2, 0.5, True, 2),       # ceil(1.6)
    (320, 6, 0.5, True, 8),       # exactly 8 (the reference's float accumulation gives 9)
    (1280, 2, 0.2, True, 3),      # ceil(2.56)
    (1280, 10, 0.2, True, 24),    # ceil(23.04)
    (1280, 2, 0.1, False, 2),     # ceil(1.28)
    (1280, 9, 0.1, False, 2),     # LL-Cp: constant from epoch 2
    (320, 5, 0.0, True, 0),       # Δ = 0: never
    (10, 3, 100.0, True, 20),     # may exceed the cells: every unknown cell is selected then
])
def test_large_loss_count(num_cells: int, epoch: int, delta: float, cumulative: bool, k: int) -> None:
    assert large_loss_count(num_cells, epoch, delta, cumulative) == k
    share = (epoch - 1 if cumulative else 1) * delta / 100 if epoch >= 2 else 0.0
    assert k == math.ceil(round(num_cells * share, 9))


def test_select_large_losses_bounds_and_ties() -> None:
    losses = torch.tensor([[5.0, 2.0, 2.0, 1.0], [9.0, 0.5, 2.0, 3.0]])
    unknown = torch.tensor([[False, True, True, True], [False, True, True, False]])
    assert not select_large_losses(losses, unknown, 0).any()
    assert not select_large_losses(losses, unknown, -1).any()
    # k = 1: θ = 2.0 (the largest unknown loss), shared by three unknown cells; the observed 5, 9, 3 never count
    assert mask_cells(select_large_losses(losses, unknown, 1)) == {(0, 1), (0, 2), (1, 2)}
    assert mask_cells(select_large_losses(losses, unknown, 4)) == {(0, 1), (0, 2), (0, 3), (1, 2)}
    assert torch.equal(select_large_losses(losses, unknown, 5), unknown)
    assert torch.equal(select_large_losses(losses, unknown, 50), unknown)
    assert not select_large_losses(losses, torch.zeros_like(unknown), 3).any()


# --- golden values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODES))
def test_epoch_1_is_plain_assume_negative_bce(name: str) -> None:
    _, out = run(name, 1, delta=50.0)  # a Δ that would select most cells from epoch 2
    assert_cells(out, expected_cells(set(), "reject"))
    key = MODES[name][1]
    assert set(out.aux) == {key} and out.aux[key].dtype == torch.bool and not out.aux[key].any()


@pytest.mark.parametrize("name", sorted(MODES))
def test_spec_delta_epoch_2_selects_the_tie_at_the_largest_unknown_loss(name: str) -> None:
    # Δ of docs/methods.md §3.4 (0.5 / 0.2 / 0.1 %) on 10 cells: k = 1 at epoch 2, θ = L(1.0),
    # both cells at logit 1.0 selected
    mode, key, _ = MODES[name]
    x, out = run(name, 2)
    selected = {(0, 1), (1, 0)}
    assert_cells(out, expected_cells(selected, mode))
    assert mask_cells(out.aux[key]) == selected
    out.total.backward()
    for i, j in selected:  # d/ds of 0 or of BCE(s, 1) = σ(s) − 1, over the 10 cells
        s = LOGITS[i][j]
        expected = 0.0 if mode == "reject" else (1 / (1 + math.exp(-s)) - 1) / 10
        assert x.grad[i, j].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name, epoch, k, selected", [
    # Δ = 15 %: k = ceil(10·(t−1)·0.15) for LL-R/LL-Ct, ceil(10·0.15) = 2 for LL-Cp
    ("ll-r", 2, 2, UNKNOWN_BY_LOSS[:2]),     # k = 2: θ = L(1.0), the tie only
    ("ll-r", 3, 3, UNKNOWN_BY_LOSS[:3]),     # k = 3: θ = L(0.5)
    ("ll-ct", 2, 2, UNKNOWN_BY_LOSS[:2]),
    ("ll-ct", 3, 3, UNKNOWN_BY_LOSS[:3]),
    ("ll-ct", 4, 5, UNKNOWN_BY_LOSS[:5]),    # k = ceil(4.5) = 5: θ = L(−1.0)
    ("ll-cp", 2, 2, UNKNOWN_BY_LOSS[:2]),
    ("ll-cp", 9, 2, UNKNOWN_BY_LOSS[:2]),    # LL-Cp's k does not grow
])
def test_growing_and_constant_shares(name: str, epoch: int, k: int, selected: list) -> None:
    mode, key, cumulative = MODES[name]
    assert large_loss_count(10, epoch, 15.0, cumulative) == k
    _, out = run(name, epoch, delta=15.0)
    assert_cells(out, expected_cells(set(selected), mode))
    assert mask_cells(out.aux[key]) == set(selected)


@pytest.mark.parametrize("name", sorted(MODES))
def test_k_beyond_the_unknown_cells_selects_every_unknown_cell_only(name: str) -> None:
    mode, key, _ = MODES[name]
    _, out = run(name, 3, delta=100.0)  # k ≥ 10 > 6 unknown cells
    assert_cells(out, expected_cells(set(UNKNOWN_BY_LOSS), mode))
    assert mask_cells(out.aux[key]) == set(UNKNOWN_BY_LOSS)


@pytest.mark.parametrize("name", sorted(MODES))
def test_delta_zero_never_modifies(name: str) -> None:
    _, out = run(name, 10, delta=0.0)
    assert_cells(out, expected_cells(set(), "reject"))


def test_observed_negatives_keep_target_zero_and_are_never_candidates() -> None:
    # every unknown cell selected: the observed negatives (3, 4) and positive (−3) keep their own terms
    _, out = run("ll-ct", 5, delta=100.0)
    assert out.cells[0, 3].item() == pytest.approx(bce_logits(3.0, 0), rel=1e-12)
    assert out.cells[1, 2].item() == pytest.approx(bce_logits(4.0, 0), rel=1e-12)
    assert out.cells[1, 3].item() == pytest.approx(bce_logits(-3.0, 1), rel=1e-12)
    assert not out.aux["corrected"][torch.tensor(OBSERVED) != 0].any()


def test_no_unknown_cell_modifies_nothing() -> None:
    observed = [[1, -1, -1, -1, 1], [-1, -1, 1, -1, -1]]
    _, out = run("ll-r", 5, delta=100.0, observed=observed)
    assert not out.aux["rejected"].any()
    expected = [[bce_logits(s, 1 if o == 1 else 0) for s, o in zip(ls, os)] for ls, os in zip(LOGITS, observed)]
    assert out.cells.tolist()[0] == pytest.approx(expected[0], rel=1e-12)


@pytest.mark.parametrize("name, voc, digits", [("ll-r", 0.5, 3.0), ("ll-ct", 0.2, 1.2), ("ll-cp", 0.1, 0.6)])
def test_dataset_defaults_and_errors(name: str, voc: float, digits: float) -> None:
    for family in ("voc", "coco", "nus", "cub"):
        assert create_loss_cfg(name, family, {}).delta == voc
    assert create_loss_cfg(name, "digits", {}).delta == digits
    for bad in (-0.1, 100.5):
        with pytest.raises(InputError, match="delta"):
            create_loss_cfg(name, "voc", {"delta": bad})
    assert get_loss_info(name).label_state == ("ll-cp" if name == "ll-cp" else None)


# --- the ll-cp label state -----------------------------------------------------------------------------

def make_state(observed: np.ndarray):
    ctx = LabelStateContext(observed=observed.astype(np.int8), family="voc", seed=0, device=torch.device("cpu"),
                            num_epochs=10)
    return create_label_state("ll-cp", ctx, {})


def step(state, rows: list[int], all_observed: np.ndarray, logits: list[list[float]], epoch: int,
         delta: float = 15.0):
    """One training step in the loop's order: observed_for → loss → after_step."""
    rows_t = torch.tensor(rows)
    observed = state.observed_for(rows_t, torch.as_tensor(all_observed[rows]).long())
    epoch_state = EpochState(epoch, 10)
    out = get_loss_info("ll-cp").fn(logits=torch.tensor(logits, dtype=torch.float64), observed=observed,
                                    pseudo=None, epoch=epoch_state, cfg=create_loss_cfg("ll-cp", "voc",
                                                                                        {"delta": delta}),
                                    state=state.batch_state(rows_t, torch.device("cpu")))
    state.after_step(rows=rows_t, logits=torch.tensor(logits), observed=observed, out=out, epoch=epoch_state)
    return observed, out


ALL_OBSERVED = np.array([[0, 0, 0, 0, 0],
                         [1, 0, 0, -1, 0],   # row 1 = LOGITS[0]'s labels
                         [0, 0, -1, 1, 0],   # row 2 = LOGITS[1]'s labels
                         [0, 1, 0, 0, 0]])


def test_ll_cp_corrections_stay_positive_in_later_epochs(tmp_path) -> None:
    info = get_label_state_info("ll-cp")
    assert not info.uses_sims
    state = make_state(ALL_OBSERVED)
    # epoch 1: nothing is corrected
    observed, out = step(state, [1, 2], ALL_OBSERVED, LOGITS, epoch=1)
    assert torch.equal(observed, torch.as_tensor(ALL_OBSERVED[[1, 2]]).long())
    assert not state.tables["corrected"].data.any()
    assert state.end_epoch(epoch=EpochState(1, 10), rows=None, probs=None) == {"corrected": 0.0}
    # epoch 2: k = ceil(10·0.15) = 2 → the tie at logit 1.0: row 1 class 1 and row 2 class 0
    observed, out = step(state, [1, 2], ALL_OBSERVED, LOGITS, epoch=2)
    assert mask_cells(out.aux["corrected"]) == {(0, 1), (1, 0)}
    flags = state.tables["corrected"].data
    assert flags.dtype == torch.int8 and flags.sum().item() == 2 and flags[1, 1] == 1 and flags[2, 0] == 1
    assert state.end_epoch(epoch=EpochState(2, 10), rows=None, probs=None) == {"corrected": 2.0}
    # epoch 3, the batch in another order and now confident negatives on the corrected cells: they stay +1
    later = [[-6.0, 2.0, -3.0, 0.0, -1.0], [-6.0, 0.5, 1.5, 3.0, -1.0]]  # rows 2, 1
    observed, out = step(state, [2, 1], ALL_OBSERVED, later, epoch=3)
    assert observed.tolist() == [[1, 0, -1, 1, 0], [1, 1, 0, -1, 0]]
    # a permanent positive has the observed-positive term BCE(s, 1) and is no candidate any more
    assert out.cells[0, 0].item() == pytest.approx(bce_logits(-6.0, 1), rel=1e-12)
    assert out.cells[1, 1].item() == pytest.approx(bce_logits(0.5, 1), rel=1e-12)
    # unknown now: (0,1) s=2, (0,4) −1, (1,2) 1.5, (1,4) −1 → k = 2: logits 2 and 1.5
    assert mask_cells(out.aux["corrected"]) == {(0, 1), (1, 2)}
    assert state.tables["corrected"].data.sum().item() == 4
    # rows outside the batch are untouched
    assert not state.tables["corrected"].data[[0, 3]].any()

    # save (as `last.pt` does) and load into a fresh state: the same permanent positives
    path = tmp_path / "state.pt"
    torch.save(state.state_dict(), path)
    restored = make_state(ALL_OBSERVED)
    restored.load_state_dict(torch.load(path, weights_only=True))
    rows = torch.arange(4)
    assert torch.equal(restored.observed_for(rows, torch.as_tensor(ALL_OBSERVED).long()),
                       state.observed_for(rows, torch.as_tensor(ALL_OBSERVED).long()))
    assert restored.tables["corrected"].data.dtype == torch.int8
    with pytest.raises(ValueError, match="lacks tables"):
        make_state(ALL_OBSERVED).load_state_dict({})


def test_ll_cp_state_never_turns_an_observed_negative_positive() -> None:
    state = make_state(ALL_OBSERVED)
    state.tables["corrected"].data[1, 3] = 1  # an observed negative
    state.tables["corrected"].data[1, 4] = 1  # an unknown cell
    out = state.observed_for(torch.tensor([1]), torch.as_tensor(ALL_OBSERVED[[1]]).long())
    assert out.tolist() == [[1, 0, 0, -1, 1]]


def test_ll_cp_run_keeps_its_corrections_in_last_pt(digits_methods, tmp_path) -> None:
    out = tmp_path / "ll-cp"
    args = ["train", "--dataset", digits_methods, "--method", "ll-cp", "--out", out, "--epochs", "2",
            "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "3"]
    assert run_cli(args) == 0
    state = load_state(out / "last.pt")
    flags = state["label_state"]["corrected"]
    # digits Δ = 0.6 % of 32·10 cells: k = ceil(1.92) = 2 per batch of epoch 2, 3 batches
    assert flags.dtype == torch.int8 and flags.sum().item() >= 6
    from mlpl.schemas.dataset import open_dataset

    ds = open_dataset(digits_methods)
    start, stop = ds.meta.split_range("train")
    obs = ds.observations("spml")
    observed = np.zeros((stop - start, ds.meta.num_classes), dtype=np.int8)
    observed[obs.row - start] = obs.matrix(ds.meta.num_classes)
    assert (observed[flags.numpy() > 0] == 0).all()  # only unknown cells were corrected
    from mlpl.schemas import run as run_schema

    train = [r for r in run_schema.read_metrics(out) if r["split"] == "train"]
    assert [r["state_corrected"] for r in train] == [0.0, float(flags.sum())]


# --- the ll-ct pseudo-labeller ---------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [None, 15.0, 100.0])
def test_ll_ct_pseudo_labels_are_the_loss_corrections(delta: float | None) -> None:
    info = get_pseudolabeller_info("ll-ct")
    assert (info.uses_sims, info.needs_logits) == (False, True)
    overrides = {} if delta is None else {"delta": delta}
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 20, generator=gen)
    observed = torch.zeros(16, 20, dtype=torch.long)
    observed[torch.arange(16), torch.randint(0, 20, (16,), generator=gen)] = 1
    observed[:4, 10:14] = -1
    for epoch in range(1, 5):
        state = EpochState(epoch, 10)
        pseudo = info.fn(sims=None, observed=observed, cfg=create_pseudo_cfg("ll-ct", "coco", overrides),
                         logits=logits, epoch=state)
        out = get_loss_info("ll-ct").fn(logits=logits, observed=observed, pseudo=None, epoch=state,
                                        cfg=create_loss_cfg("ll-ct", "coco", overrides))
        assert pseudo.dtype == torch.int8 and pseudo.shape == (16, 20)
        assert torch.equal(pseudo, out.aux["corrected"].to(torch.int8))
        assert not pseudo[observed != 0].any()
        k = large_loss_count(320, epoch, 0.2 if delta is None else delta, cumulative=True)
        assert int(pseudo.sum()) == min(k, int((observed == 0).sum()))  # random logits: no ties


def test_ll_ct_pseudo_labeller_defaults() -> None:
    for family in ("voc", "coco", "nus", "cub"):
        assert create_pseudo_cfg("ll-ct", family, {}).delta == 0.2
    assert create_pseudo_cfg("ll-ct", "digits", {}).delta == 1.2


def test_aevlp_with_ll_ct_pseudo_labels_trains(digits_methods, tmp_path) -> None:
    from mlpl.schemas import run as run_schema
    from mlpl.stages.train.loop import Trainer

    out = tmp_path / "gpr-llct"
    args = ["train", "--dataset", digits_methods, "--method", "aevlp", "--pseudo", "ll-ct", "--out", out,
            "--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "3"]
    assert run_cli(args) == 0  # no store needed: ll-ct reads the network, not the teacher
    summary = run_schema.validate(out)
    assert summary.method == "aevlp"
    train = [r for r in run_schema.read_metrics(out) if r["split"] == "train"]
    assert train[0]["pseudo_precision"] == 0.0 and train[0]["pseudo_recall"] == 0.0  # epoch 1: none

    # the loop hands the labeller the batch's logits and epoch
    from mlpl.config import resolve_train_cfg

    cfg = resolve_train_cfg("aevlp", str(digits_methods), "digits", str(tmp_path / "x"), None,
                            {"pseudo": "ll-ct", "batch_size": 8})
    trainer = Trainer(cfg)
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    observed = torch.zeros(8, 10, dtype=torch.long)
    observed[:, 0] = 1
    state = EpochState(3, cfg.epochs)
    batch = {"row": torch.arange(8) + trainer.train_start}
    pseudo = trainer._pseudo(batch, observed, torch.Generator(), 3, logits, state)
    expected = get_loss_info("ll-ct").fn(logits=logits, observed=observed, pseudo=None, epoch=state,
                                         cfg=create_loss_cfg("ll-ct", "digits", {})).aux["corrected"]
    assert torch.equal(pseudo, expected.to(torch.int8)) and pseudo.sum() > 0
