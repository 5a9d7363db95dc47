"""CDUL (docs/methods.md §4.4, 5): golden values of the initial pseudo-labels and of one gradient-alignment step,
the label state's hooks, errors, save/load and ablation switches, and its improvement on the digits world."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.labelstate import LabelStateContext, create_label_state
from mlpl.stages.train.labelstate.cdul import (
    Z_MAX,
    CdulCfg,
    cdul_scores,
    gaussian_weight,
    pseudo_label_step,
)
from mlpl.stages.train.losses import EpochState, LossOutput, create_loss_cfg, get_loss_info

# Expected values below are computed here from docs/methods.md's formulas with `math`, independently of the code.


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(row: list[float], temperature: float) -> list[float]:
    e = [math.exp(temperature * v) for v in row]
    return [v / sum(e) for v in e]


# One image, 2×2 grid: the global view, then tiles 1–4 (rows: views; columns: 3 classes).
SIMS = [[0.30, 0.20, 0.10],
        [0.10, 0.40, 0.10],
        [0.20, 0.10, 0.30],
        [0.10, 0.10, 0.10],
        [0.22, 0.20, 0.15]]
TEMPERATURE = 10.0


def expected_labels(zeta: float, lam: float, aggregator: bool = True) -> tuple[list[float], list[bool]]:
    """ŷ of docs/methods.md §4.4 for SIMS, and for each class whether ω > ζ took the max branch. The λ term is halved
    (λ·|S_g − S_agg|/2) so that λ = 1 gives the element-wise max, as docs/methods.md §4.4 says it does."""
    s = [softmax(row, TEMPERATURE) for row in SIMS]
    s_g, tiles = s[0], s[1:]
    labels, took_max = [], []
    for c in range(3):
        column = [t[c] for t in tiles]
        omega, psi = max(column), min(column)
        agg = (omega if omega > zeta else psi) if aggregator else sum(column) / len(column)
        labels.append((s_g[c] + agg) / 2 + lam * abs(s_g[c] - agg) / 2)
        took_max.append(omega > zeta)
    return labels, took_max


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.3])
def test_initial_labels_golden(lam):
    expected, took_max = expected_labels(zeta=0.5, lam=lam)
    assert took_max == [False, True, True]  # ω_0 ≈ 0.43 < ζ < ω_1, ω_2: both branches of the aggregator
    sims = torch.tensor([SIMS], dtype=torch.float64)
    scores = cdul_scores(sims, temperature=TEMPERATURE, grid=2, zeta=0.5, lam=lam)
    assert scores.labels[0].tolist() == pytest.approx(expected, rel=1e-12)
    assert scores.s_global[0].tolist() == pytest.approx(softmax(SIMS[0], TEMPERATURE), rel=1e-12)
    if lam == 1.0:  # the element-wise max of S_g and S_agg
        plain, _ = expected_labels(zeta=0.5, lam=0.0)
        s_g = softmax(SIMS[0], TEMPERATURE)
        assert expected == pytest.approx([max(g, 2 * p - g) for g, p in zip(s_g, plain)], rel=1e-12)
    # ζ above every ω: every class takes its worst tile
    low, took_max = expected_labels(zeta=0.95, lam=lam)
    assert not any(took_max)
    assert cdul_scores(sims, temperature=TEMPERATURE, grid=2, zeta=0.95, lam=lam).labels[0].tolist() == \
        pytest.approx(low, rel=1e-12)


def test_lambda_one_is_the_elementwise_max():
    sims = torch.rand(6, 10, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = cdul_scores(sims, temperature=30.0, grid=3, zeta=0.3, lam=1.0)
    torch.testing.assert_close(scores.labels, torch.maximum(scores.s_global, scores.s_agg), rtol=1e-12, atol=1e-15)


def test_ablation_switches_golden():
    sims = torch.tensor([SIMS], dtype=torch.float64)
    no_aggregator, _ = expected_labels(zeta=0.5, lam=0.0, aggregator=False)
    got = cdul_scores(sims, temperature=TEMPERATURE, grid=2, zeta=0.5, aggregator=False).labels[0].tolist()
    assert got == pytest.approx(no_aggregator, rel=1e-12)
    # without local similarity ŷ is the global view's softmax; tiles need not exist
    got = cdul_scores(sims[:, :1], temperature=TEMPERATURE, grid=2, local=False).labels[0].tolist()
    assert got == pytest.approx(softmax(SIMS[0], TEMPERATURE), rel=1e-12)
    with pytest.raises(ValueError, match="2×2 grid needs 5"):
        cdul_scores(sims[:, :4], temperature=TEMPERATURE, grid=2)


def test_soft_bce_gradient_with_respect_to_the_label_is_minus_the_logit():
    """∂ℓ/∂ŷ = −s per cell, checked against the `soft-bce` loss the network trains with (mean over B·C)."""
    logits = torch.tensor([[1.5, -0.5, 0.8], [-2.0, 0.1, 3.0]], dtype=torch.float64)
    target = torch.tensor([[0.2, 0.7, 0.5], [0.9, 0.4, 0.05]], dtype=torch.float64, requires_grad=True)
    out = get_loss_info("soft-bce").fn(
        logits=logits, observed=torch.zeros(2, 3, dtype=torch.long), pseudo=None, epoch=EpochState(1, 1),
        cfg=create_loss_cfg("soft-bce", None, {}), state={"target": target, "weight": torch.ones_like(target)},
    )
    # `soft_bce` detaches its target (the network step); differentiate the same cells with the target live
    cells = -(target * torch.nn.functional.logsigmoid(logits) + (1 - target) * torch.nn.functional.logsigmoid(-logits))
    torch.testing.assert_close(out.cells, cells.detach(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(cells.mean(), target)
    torch.testing.assert_close(grad * 6, -logits, rtol=1e-12, atol=1e-12)


def test_one_pseudo_label_step_by_hand():
    z = [0.3, -1.2, 2.0, 0.0]
    s = [1.5, -0.5, 0.8, -3.0]
    lr, sigma = 0.5, 0.15
    expected = []
    for zc, sc in zip(z, s):
        y = sig(zc)
        psi = math.exp(-((y - 0.5) ** 2) / (2 * sigma ** 2))
        grad = -sc  # ∂ℓ/∂ŷ of the soft BCE
        expected.append(zc - lr * psi * grad)
    got = pseudo_label_step(torch.tensor(z, dtype=torch.float64), torch.tensor(s, dtype=torch.float64),
                            lr_z=lr, sigma_psi=sigma)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # labels move toward the network's side, uncertain ones most (ŷ = 0.5: ψ = 1, the full step)
    assert got[3].item() == pytest.approx(lr * -3.0)
    assert gaussian_weight(torch.tensor([0.5, 0.65, 0.95]), 0.15).tolist() == \
        pytest.approx([1.0, math.exp(-0.5), math.exp(-4.5)], rel=1e-6)
    # the latent stays finite
    assert pseudo_label_step(torch.tensor([13.0]), torch.tensor([1e4]), lr_z=1.0, sigma_psi=10.0).item() == \
        pytest.approx(Z_MAX)


# ---------------------------------------------------------------------------------------------- label state
N, C, GRID = 7, 3, 2


def fake_sims(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return (0.1 + 0.3 * rng.rand(N, 1 + GRID * GRID, C)).astype(np.float32)


def make_ctx(sims: np.ndarray, grid: int = GRID, teacher: dict | None = None, observed: np.ndarray | None = None,
             reads: list[int] | None = None, num_epochs: int = 4) -> LabelStateContext:
    def read(seed_index: int):
        if reads is not None:
            reads.append(seed_index)
        for start in range(0, N, 3):  # chunks of 3 rows
            yield np.arange(start, min(start + 3, N)), sims[start:start + 3]

    attrs = {"dataset_name": "fake", "teacher": {"model": "fake", "logit_scale": TEMPERATURE} if teacher is None
             else teacher, "views": {"grid": grid}}
    return LabelStateContext(observed=np.zeros((N, C), np.int8) if observed is None else observed,
                             family="digits", seed=0, device=torch.device("cpu"), read_sims=read,
                             store_attrs=attrs, num_epochs=num_epochs)


def out_stub() -> LossOutput:
    zero = torch.zeros(())
    return LossOutput(total=zero, cells=torch.zeros(1, C), regulariser=zero)


def step(state, rows: list[int], logits: torch.Tensor, epoch: int, num_epochs: int = 4) -> None:
    state.after_step(rows=torch.tensor(rows), logits=logits, observed=torch.zeros(len(rows), C, dtype=torch.long),
                     out=out_stub(), epoch=EpochState(epoch, num_epochs))


def test_state_initialises_from_seed_zero_of_the_store():
    sims = fake_sims()
    reads: list[int] = []
    state = create_label_state("cdul", make_ctx(sims, reads=reads), {"grid": GRID})
    assert reads == [0]
    expected = cdul_scores(torch.from_numpy(sims).double(), temperature=TEMPERATURE, grid=GRID).labels.numpy()
    np.testing.assert_allclose(state.labels(), expected, rtol=1e-5, atol=1e-7)
    view = state.batch_state(torch.tensor([4, 1]), torch.device("cpu"))
    np.testing.assert_allclose(view["target"].numpy(), expected[[4, 1]], rtol=1e-5, atol=1e-7)
    assert torch.equal(view["weight"], torch.ones(2, C))
    assert state.tables["z"].data.dtype == torch.float32


def test_state_temperature_unreadable_rows_and_observed_cells():
    sims = fake_sims()
    sims[2, 3, 1] = np.nan
    observed = np.zeros((N, C), np.int8)
    observed[5] = [1, 0, -1]
    state = create_label_state("cdul", make_ctx(sims, observed=observed, teacher={"model": "fake"}),
                               {"grid": GRID, "temperature": 25.0})
    labels = state.labels()
    assert labels[2].tolist() == [0.5, 0.5, 0.5]  # no teacher information: the latent's unknown point
    expected = cdul_scores(torch.from_numpy(sims[[0]]).double(), temperature=25.0, grid=GRID).labels.numpy()
    np.testing.assert_allclose(labels[0], expected[0], rtol=1e-5)
    assert labels[5, 0] == pytest.approx(1.0, abs=2e-6) and labels[5, 2] == pytest.approx(0.0, abs=2e-6)
    before = labels[5].copy()
    state.begin_epoch()
    state.after_step(rows=torch.tensor([5]), logits=torch.tensor([[-4.0, 4.0, 4.0]]),
                     observed=torch.tensor([[1, 0, -1]]), out=out_stub(), epoch=EpochState(2, 4))
    after = state.labels()[5]
    assert after[0] == before[0] and after[2] == before[2] and after[1] > before[1]  # observed cells stay


def test_defaults_follow_the_paper():
    cfg = CdulCfg()
    assert (cfg.grid, cfg.temperature, cfg.zeta, cfg.lam, cfg.local, cfg.aggregator) == (3, None, 0.5, 0.0, True, True)
    assert (cfg.update, cfg.period, cfg.warmup_epochs, cfg.lr_z, cfg.sigma_psi) == ("step", 1, 1, 0.1, 0.15)


def test_store_grid_mismatch_and_missing_logit_scale_are_refused():
    with pytest.raises(InputError, match=r"precompute-clip --grid 3"):
        create_label_state("cdul", make_ctx(fake_sims(), grid=GRID), {})
    with pytest.raises(InputError, match=r"logit_scale.*label_state_params.temperature"):
        create_label_state("cdul", make_ctx(fake_sims(), teacher={"model": "fake"}), {"grid": GRID})
    # without local similarity only the global view is read: any grid will do
    state = create_label_state("cdul", make_ctx(fake_sims(), grid=GRID), {"local": False})
    np.testing.assert_allclose(state.labels()[0], softmax(fake_sims()[0, 0].tolist(), TEMPERATURE), rtol=1e-5)
    with pytest.raises(InputError, match="sigma_psi"):
        CdulCfg(sigma_psi=0.0)
    with pytest.raises(InputError, match="update"):
        create_label_state("cdul", make_ctx(fake_sims()), {"grid": GRID, "update": "batch"})


def test_ablation_switches_in_the_state_and_presets():
    from mlpl.config import resolve_train_cfg

    sims = fake_sims()
    mean = create_label_state("cdul", make_ctx(sims), {"grid": GRID, "aggregator": False}).labels()
    expected = cdul_scores(torch.from_numpy(sims).double(), temperature=TEMPERATURE, grid=GRID,
                           aggregator=False).labels.numpy()
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(mean, create_label_state("cdul", make_ctx(sims), {"grid": GRID}).labels())
    assert resolve_train_cfg("cdul-no-local", "d", "coco", "o").label_state_params == {"local": False}
    assert resolve_train_cfg("cdul-no-aggregator", "d", "voc2012", "o").label_state_params == {"aggregator": False}
    cfg = resolve_train_cfg("cdul", "d", "coco", "o")
    assert (cfg.loss, cfg.label_state, cfg.pseudo, cfg.regime, cfg.needs_store) == \
        ("soft-bce", "cdul", "none", "none", True)


def test_step_updates_follow_warmup_and_period():
    state = create_label_state("cdul", make_ctx(fake_sims()), {"grid": GRID, "period": 2, "warmup_epochs": 1,
                                                                   "lr_z": 0.5})
    logits = torch.full((2, C), 2.0)
    start = state.tables["z"].data.clone()
    state.begin_epoch()
    for _ in range(3):
        step(state, [0, 1], logits, epoch=1)  # warm-up: nothing moves
    assert torch.equal(state.tables["z"].data, start)
    state.begin_epoch()
    step(state, [0, 1], logits, epoch=2)  # step 0 of the epoch: updated
    step(state, [2, 3], logits, epoch=2)  # step 1: skipped (period 2)
    step(state, [4], logits[:1], epoch=2)  # step 2: updated
    z = state.tables["z"].data
    expected = pseudo_label_step(start, torch.full((N, C), 2.0), lr_z=0.5, sigma_psi=0.15)
    for row in range(N):
        torch.testing.assert_close(z[row], expected[row] if row in (0, 1, 4) else start[row])
    record = state.end_epoch(epoch=EpochState(2, 4), rows=None, probs=None)
    change = (torch.sigmoid(z) - torch.sigmoid(start)).abs().mean().item()
    assert record["label_change"] == pytest.approx(change, rel=1e-5) and record["label_change"] > 0
    assert record["label_mean"] == pytest.approx(torch.sigmoid(z).mean().item(), rel=1e-6)


def test_epoch_updates_use_every_training_prediction():
    state = create_label_state("cdul", make_ctx(fake_sims(), num_epochs=5),
                               {"grid": GRID, "update": "epoch", "period": 2, "warmup_epochs": 1, "lr_z": 0.25})
    wants = [state.wants_train_predictions(EpochState(e, 5)) for e in range(1, 6)]
    assert wants == [True, False, True, False, False]  # after epochs 1, 3; never after the last
    step(state, [0, 1], torch.full((2, C), 5.0), epoch=3, num_epochs=5)  # per-step updates are off
    start = state.tables["z"].data.clone()
    assert torch.equal(start, create_label_state("cdul", make_ctx(fake_sims()), {"grid": GRID}).tables["z"].data)
    probs = np.tile(np.array([[0.0, 0.5, 0.9]], np.float32), (N, 1))  # 0 is clamped: a finite logit
    state.begin_epoch()
    record = state.end_epoch(epoch=EpochState(1, 5), rows=np.arange(N)[::-1].copy(), probs=probs)
    logit = [math.log(1e-6 / (1 - 1e-6)), 0.0, math.log(9.0)]
    z = state.tables["z"].data
    for row in range(N):
        for c in range(C):
            y = sig(start[row, c].item())
            psi = math.exp(-((y - 0.5) ** 2) / (2 * 0.15 ** 2))
            expected = start[row, c].item() + 0.25 * psi * logit[c]
            assert z[row, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert torch.isfinite(z).all() and record["label_change"] > 0


def test_state_round_trips_through_save_and_load():
    state = create_label_state("cdul", make_ctx(fake_sims()), {"grid": GRID})
    state.begin_epoch()
    step(state, [3, 6], torch.tensor([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0]]), epoch=2)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_label_state("cdul", make_ctx(fake_sims(1)), {"grid": GRID})
    assert not np.allclose(fresh.labels(), state.labels())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert np.array_equal(fresh.labels(), state.labels())
    with pytest.raises(ValueError, match="lacks tables"):
        fresh.load_state_dict({})

