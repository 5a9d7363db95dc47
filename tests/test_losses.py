"""Golden-value tests of the losses (docs/methods.md §3.1, 3.6, 3.7) and of the loss registry."""

from __future__ import annotations

import math

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.families import HYPERPARAMETER_FAMILIES as HYPERPARAMETER_DATASETS
from mlpl.stages.train.losses import (
    LOSSES,
    EpochState,
    create_loss_cfg,
    get_loss_info,
)
from mlpl.stages.train.losses.robust import gr_schedule

# Expected values below are computed here from docs/methods.md's formulas with `math`, independently of the code.


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def nlog(x: float, eps: float) -> float:
    return -math.log(x + eps)


def gr_term(p: float, w: float, b: float, mu: float, sigma: float, q1: float = 1.0, q2: float = 0.01) -> float:
    k = sig(w * p + b)
    v = math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))
    return v * (k * (1 - p ** q2) / q2 + (1 - k) * (1 - (1 - p) ** q1) / q1)


def run(name: str, logits: list[list[float]], observed: list[list[int]], pseudo: list[list[int]] | None,
        epoch: EpochState, cfg: object):
    return get_loss_info(name).fn(
        logits=torch.tensor(logits, dtype=torch.float64),
        observed=torch.tensor(observed, dtype=torch.int64),
        pseudo=None if pseudo is None else torch.tensor(pseudo, dtype=torch.int8),
        epoch=epoch,
        cfg=cfg,
    )


def assert_cells(out, expected: list[list[float]], regulariser: float = 0.0) -> None:
    cells = out.cells.tolist()
    for row, expected_row in zip(cells, expected):
        assert row == pytest.approx(expected_row, rel=1e-9, abs=1e-12)
    flat = [v for row in expected for v in row]
    assert out.regulariser.item() == pytest.approx(regulariser, rel=1e-9, abs=1e-15)
    assert out.total.item() == pytest.approx(sum(flat) / len(flat) + regulariser, rel=1e-9)


E1 = EpochState(epoch=1, num_epochs=8)

LOGITS = [[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]]
OBSERVED = [[1, 0, -1], [0, -1, 1]]


# --- baselines (ε = 1e-5) -------------------------------------------------------------------------------

def test_bce_observed_cells_only() -> None:
    out = run("bce", LOGITS, OBSERVED, None, E1, create_loss_cfg("bce", None, {}))
    eps = 1e-5
    assert_cells(out, [[nlog(sig(0.5), eps), 0.0, nlog(1 - sig(2.0), eps)],
                       [0.0, nlog(1 - sig(3.0), eps), nlog(sig(-2.0), eps)]])


def test_bce_unknown_cells_take_the_pseudo_label() -> None:
    # Observed cells ignore the pseudo-label (row 0 col 0 is observed +1 with pseudo -1).
    pseudo = [[-1, 1, 1], [-1, 1, 0]]
    out = run("bce", LOGITS, OBSERVED, pseudo, E1, create_loss_cfg("bce", "voc", {}))
    eps = 1e-5
    assert_cells(out, [[nlog(sig(0.5), eps), nlog(sig(-1.0), eps), nlog(1 - sig(2.0), eps)],
                       [nlog(1 - sig(0.0), eps), nlog(1 - sig(3.0), eps), nlog(sig(-2.0), eps)]])


def test_bce_full_labels() -> None:
    out = run("bce", [[1.0, -1.0]], [[1, -1]], None, E1, create_loss_cfg("bce", None, {}))
    assert_cells(out, [[nlog(sig(1.0), 1e-5), nlog(1 - sig(-1.0), 1e-5)]])


def test_an_treats_unknown_and_observed_negative_as_negative() -> None:
    pseudo = [[1, 1, 1], [1, 1, 1]]  # ignored by AN
    out = run("an", LOGITS, OBSERVED, pseudo, E1, create_loss_cfg("an", "coco", {}))
    eps = 1e-5
    assert_cells(out, [[nlog(sig(0.5), eps), nlog(1 - sig(-1.0), eps), nlog(1 - sig(2.0), eps)],
                       [nlog(1 - sig(0.0), eps), nlog(1 - sig(3.0), eps), nlog(sig(-2.0), eps)]])


def test_baseline_epsilon_caps_a_confidently_wrong_cell() -> None:
    # p = sigmoid(-40) ~ 4e-18: the term is -log(p + 1e-5) ~ 11.5129, not 40 (what BCE-with-logits gives).
    out = run("an", [[-40.0]], [[1]], None, E1, create_loss_cfg("an", None, {}))
    assert out.cells.item() == pytest.approx(-math.log(1e-5), rel=1e-9)


# --- GR (ε = 1e-7) --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("beta", "epoch", "expected"), [
    ((0, 2, -2, -2), EpochState(1, 8), (0.0, -2.0, 0.5375, 1.8125)),  # docs/methods.md §3.6 worked values, VOC
    ((0, 2, -2, -2), EpochState(8, 8), (1.75, -2.0, 0.8, 0.5)),
    ((0, 10, -2, -8), EpochState(5, 8), (5.0, -5.0, 0.6875, 1.0625)),  # COCO: (e-1)/T = 1/2, e/T = 5/8
    ((0, 10, -2, -8), EpochState(10, 10), (9.0, -7.4, 0.8, 0.5)),  # NUS/CUB: w, b never reach their ends
])
def test_gr_schedule(beta: tuple, epoch: EpochState, expected: tuple) -> None:
    s = gr_schedule(epoch, beta, (0.5, 2.0, 0.8, 0.5))
    assert (s.w, s.b, s.mu, s.sigma) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("epoch", "sched"), [
    (EpochState(1, 8), (0.0, -2.0, 0.5375, 1.8125)),
    (EpochState(8, 8), (1.75, -2.0, 0.8, 0.5)),
])
def test_gr_voc(epoch: EpochState, sched: tuple) -> None:
    logits = [[2.0, -1.0, 0.3], [-3.0, 1.5, 0.0]]
    observed = [[1, 0, 0], [0, -1, 0]]
    out = run("gr", logits, observed, [[1, 1, 1], [1, 1, 1]], epoch, create_loss_cfg("gr", "voc", {}))
    w, b, mu, sigma = sched
    v = lambda p: math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))  # noqa: E731
    eps = 1e-7
    p = [[sig(x) for x in row] for row in logits]
    assert_cells(out, [
        [nlog(p[0][0], eps), gr_term(p[0][1], *sched), gr_term(p[0][2], *sched)],
        [gr_term(p[1][0], *sched), v(p[1][1]) * nlog(1 - p[1][1], eps), gr_term(p[1][2], *sched)],
    ])
    assert out.regulariser.item() == 0.0


def test_gr_cub_uses_q1() -> None:
    cfg = create_loss_cfg("gr", "cub", {})
    assert cfg.q1 == 1.5 and cfg.beta == (0.0, 10.0, -2.0, -8.0)
    # Epoch 3 of 10: w = 10·2/10 = 2, b = -2 - 6·0.2 = -3.2, μ = 0.5 + 0.3·0.3 = 0.59, σ = 2 - 1.5·0.3 = 1.55.
    epoch = EpochState(3, 10)
    out = run("gr", [[0.7]], [[0]], None, epoch, cfg)
    assert_cells(out, [[gr_term(sig(0.7), 2.0, -3.2, 0.59, 1.55, q1=1.5)]])


def test_gr_weights_are_detached() -> None:
    # d/ds of v·[k(1 - p^q2)/q2 + (1 - k)·p] with k, v held constant: v·p(1-p)·[(1 - k) - k·p^(q2-1)].
    w, b, mu, sigma = 1.75, -2.0, 0.8, 0.5
    x = 0.4
    p = sig(x)
    k = sig(w * p + b)
    v = math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))
    expected = v * p * (1 - p) * ((1 - k) - k * p ** (0.01 - 1))
    logits = torch.tensor([[x]], dtype=torch.float64, requires_grad=True)
    out = get_loss_info("gr").fn(logits=logits, observed=torch.tensor([[0]]), pseudo=None,
                                 epoch=EpochState(8, 8), cfg=create_loss_cfg("gr", "voc", {}))
    out.total.backward()
    assert logits.grad.item() == pytest.approx(expected, rel=1e-9)


# --- GPR ------------------------------------------------------------------------------------------------

def test_gpr_every_label_case_voc_epoch_8() -> None:
    # Epoch 8 of 8, VOC: w = 1.75, b = -2, μ = 0.8, σ = 0.5; λ = [0.4, 0.7], q3 = 0.9, η = 0.05, m = 1.5.
    w, b, mu, sigma = 1.75, -2.0, 0.8, 0.5
    lam1, lam2, q3, eta, m = 0.4, 0.7, 0.9, 0.05, 1.5
    logits = [[2.0, math.log(0.25), -6.0, 1.0], [0.5, -1.0, 3.0, 0.0]]
    observed = [[1, 0, 0, 0], [0, 0, -1, 0]]
    pseudo = [[-1, 1, 1, 0], [1, -1, 1, 0]]
    p = [[sig(x) for x in row] for row in logits]
    eps = 1e-7

    def v(q: float) -> float:
        return math.exp(-((q - mu) ** 2) / (2 * sigma ** 2))

    def positive_pseudo(q: float) -> float:
        v4 = min(max(1 - v(q), lam1), lam2)
        return v4 * (q3 * nlog(q, eps) + (1 - q3) * nlog(1 - q, eps))

    # The three clip regimes of v4 = clip(1 - v, λ1, λ2) are all exercised:
    assert 1 - v(p[0][1]) == pytest.approx(0.5132, abs=1e-4)  # p = 0.2: inside [0.4, 0.7]
    assert 1 - v(p[0][2]) > lam2  # p ≈ 0.0025: clipped to 0.7
    assert 1 - v(p[1][0]) < lam1  # p ≈ 0.62: clipped to 0.4
    expected = [
        [nlog(p[0][0], eps),  # observed +1 (pseudo -1 ignored)
         positive_pseudo(p[0][1]), positive_pseudo(p[0][2]),
         gr_term(p[0][3], w, b, mu, sigma)],  # undefined pseudo-label: GR term
        [positive_pseudo(p[1][0]),
         v(p[1][1]) * nlog(1 - p[1][1], eps),  # negative pseudo-label
         v(p[1][2]) * nlog(1 - p[1][2], eps),  # observed -1 wins over pseudo +1
         gr_term(p[1][3], w, b, mu, sigma)],
    ]
    mean_positives = (sum(p[0]) + sum(p[1])) / 2
    regulariser = eta * (mean_positives - m) ** 2 / 4 ** 2
    out = run("gpr", logits, observed, pseudo, EpochState(8, 8), create_loss_cfg("gpr", "voc", {}))
    assert_cells(out, expected, regulariser)


def test_gpr_epoch_1_and_regulariser_gradient() -> None:
    # Epoch 1, COCO: w = 0, b = -2, μ = 0.5375, σ = 1.8125; η = 0.001, m = 2.9, C = 3.
    cfg = create_loss_cfg("gpr", "coco", {"eta": 0.5})
    logits = torch.tensor([[0.2, -0.4, 1.0]], dtype=torch.float64, requires_grad=True)
    out = get_loss_info("gpr").fn(logits=logits, observed=torch.tensor([[0, 0, 0]]),
                                  pseudo=torch.tensor([[0, 0, 0]]), epoch=EpochState(1, 8), cfg=cfg)
    p = [sig(x) for x in (0.2, -0.4, 1.0)]
    regulariser = 0.5 * (sum(p) - 2.9) ** 2 / 9
    assert_cells(out, [[gr_term(q, 0.0, -2.0, 0.5375, 1.8125) for q in p]], regulariser)
    out.regulariser.backward()
    # d/ds_c of η(Σp - m)²/C² = η·2(Σp - m)/C²·p_c(1 - p_c): the regulariser is not detached.
    expected = [0.5 * 2 * (sum(p) - 2.9) / 9 * q * (1 - q) for q in p]
    assert logits.grad[0].tolist() == pytest.approx(expected, rel=1e-9)


def test_gpr_without_pseudo_labels_is_gr_plus_regulariser() -> None:
    logits = [[0.3, -2.0, 1.0], [2.0, 0.1, -0.5]]
    observed = [[1, 0, 0], [0, 0, 1]]
    epoch = EpochState(4, 10)
    gpr = run("gpr", logits, observed, [[0, 0, 0], [0, 0, 0]], epoch, create_loss_cfg("gpr", "nus", {}))
    gr = run("gr", logits, observed, None, epoch, create_loss_cfg("gr", "nus", {}))
    torch.testing.assert_close(gpr.cells, gr.cells, rtol=0, atol=0)
    assert gpr.regulariser.item() > 0


def test_gpr_requires_pseudo_labels() -> None:
    with pytest.raises(ValueError, match="needs pseudo-labels"):
        run("gpr", [[0.0]], [[1]], None, E1, create_loss_cfg("gpr", "voc", {}))


# --- per-dataset configs --------------------------------------------------------------------------------

@pytest.mark.parametrize(("dataset", "beta", "q1", "lambdas", "eta", "m"), [
    ("voc", (0, 2, -2, -2), 1.0, (0.4, 0.7), 0.05, 1.5),
    ("coco", (0, 10, -2, -8), 1.0, (0.5, 0.7), 0.001, 2.9),
    ("nus", (0, 10, -2, -8), 1.0, (0.5, 0.7), 0.001, 1.9),
    ("cub", (0, 10, -2, -8), 1.5, (0.2, 0.8), 0.01, 31.4),
    ("digits", (0, 10, -2, -8), 1.0, (0.5, 0.7), 0.001, 2.5),
])
def test_gpr_dataset_defaults(dataset: str, beta: tuple, q1: float, lambdas: tuple, eta: float, m: float) -> None:
    cfg = create_loss_cfg("gpr", dataset, {})
    assert cfg.beta == beta and cfg.alpha == (0.5, 2.0, 0.8, 0.5)
    assert (cfg.q1, cfg.q2, cfg.q3) == (q1, 0.01, 0.9)
    assert (cfg.lambda1, cfg.lambda2, cfg.eta, cfg.m) == (*lambdas, eta, m)


def test_create_loss_cfg_overrides_and_errors() -> None:
    cfg = create_loss_cfg("gpr", "voc", {"beta": [0, 1, -2, -3], "eta": 1})
    assert cfg.beta == (0.0, 1.0, -2.0, -3.0) and cfg.eta == 1.0 and isinstance(cfg.eta, float)
    with pytest.raises(InputError, match="q4"):
        create_loss_cfg("gpr", "voc", {"q4": 1.0})
    with pytest.raises(InputError, match="imagenet"):
        create_loss_cfg("gr", "imagenet", {})
    with pytest.raises(InputError, match="'eta' must be a number"):
        create_loss_cfg("gpr", "voc", {"eta": "high"})
    with pytest.raises(InputError, match="4 entries"):
        create_loss_cfg("gr", "voc", {"beta": [0, 1]})
    with pytest.raises(InputError, match="lambda1"):
        create_loss_cfg("gpr", "voc", {"lambda1": 0.9})
    with pytest.raises(InputError, match="no default"):
        create_loss_cfg("gpr", None, {})
    with pytest.raises(InputError, match="did you mean 'gpr'"):
        get_loss_info("gpt")
    full = create_loss_cfg("gr", None, {"beta": (0, 2, -2, -2)})
    assert full == create_loss_cfg("gr", "voc", {})


def test_epoch_state_is_validated() -> None:
    for bad in ((0, 8), (9, 8), (1, 0)):
        with pytest.raises(ValueError):
            EpochState(*bad)


# --- every registered loss ------------------------------------------------------------------------------

def head_outputs(info, batch: int, num_classes: int) -> dict[str, torch.Tensor]:
    """The training outputs a loss reads from its head, from the real registered head that gives them."""
    from mlpl.stages.train.models import HEADS, create_head_cfg

    head_info = next(h for h in HEADS if set(info.head_outputs) <= set(h.outputs))
    torch.manual_seed(0)
    head = head_info.build(4, num_classes, create_head_cfg(head_info.name, "coco"))
    aux = head.forward_train(torch.randn(batch, 4, 2, 2)).aux
    return {name: aux[name].detach() for name in info.head_outputs}


def state_kwargs(info, observed: torch.Tensor, dataset: str = "coco") -> dict:
    """`{"state": ...}` for a loss that reads a label state: the real state built on a tiny context (random
    similarities for states that start from the store), viewed on rows 0..B−1; `{}` for other losses."""
    if info.head_outputs:
        return {"head": head_outputs(info, *observed.shape)}
    if not info.label_states:
        return {}
    import numpy as np
    from mlpl.stages.train.labelstate import LABEL_STATES, LabelStateContext, create_label_state

    registered = [name for name in info.label_states if name in LABEL_STATES]
    if not registered:
        pytest.skip(f"loss {info.name!r}: none of its label states {list(info.label_states)} is registered yet")
    obs = observed.numpy().astype(np.int8)
    sims = np.random.RandomState(0).uniform(0.1, 0.4, size=(obs.shape[0], 10, obs.shape[1])).astype(np.float32)
    ctx = LabelStateContext(
        observed=obs, family=dataset, seed=0, device=torch.device("cpu"),
        read_sims=lambda seed_index: iter([(np.arange(obs.shape[0]), sims)]),
        store_attrs={"teacher": {"logit_scale": 100.0}, "views": {"grid": 3}, "seeds": [0]}, num_epochs=10)
    state = create_label_state(registered[0], ctx, {})
    return {"state": state.batch_state(torch.arange(obs.shape[0]), torch.device("cpu"))}


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("dataset", HYPERPARAMETER_DATASETS)
def test_registered_loss_is_finite_at_extreme_logits(name: str, dataset: str) -> None:
    info = get_loss_info(name)
    assert info.name == name and info.description and info.reference
    assert set(info.dataset_defaults) == set(HYPERPARAMETER_DATASETS)
    cfg = create_loss_cfg(name, dataset, {})
    observed = torch.tensor([[1, 0, 0, -1, 0, 0], [0, 0, 1, 0, -1, 0], [-1, 0, 0, 0, 0, 1]])
    pseudo = torch.tensor([[-1, 1, -1, 1, 0, 0], [1, -1, 0, 0, 1, 0], [0, 1, -1, 1, 0, -1]], dtype=torch.int8)
    logits = torch.tensor([[30.0, -30.0, 30.0, -30.0, 30.0, -30.0],
                           [-30.0, 30.0, -30.0, 30.0, -30.0, 30.0],
                           [0.0, 5.0, -5.0, 30.0, -30.0, 1e-3]], requires_grad=True)
    for epoch in (EpochState(1, 10), EpochState(10, 10)):
        logits.grad = None
        out = info.fn(logits=logits, observed=observed, pseudo=pseudo, epoch=epoch, cfg=cfg,
                      **state_kwargs(info, observed, dataset))
        assert out.cells.shape == (3, 6) and out.cells.dtype == torch.float32
        assert out.total.shape == () and out.regulariser.shape == ()
        assert torch.isfinite(out.cells).all() and torch.isfinite(out.total)
        out.total.backward()
        assert torch.isfinite(logits.grad).all()
        assert out.total.item() == pytest.approx(out.cells.mean().item() + out.regulariser.item(), rel=1e-6)
    if not info.needs_pseudo:
        out = info.fn(logits=logits, observed=observed, pseudo=None, epoch=EpochState(1, 10), cfg=cfg,
                      **state_kwargs(info, observed, dataset))
        assert torch.isfinite(out.total)


@pytest.mark.parametrize("name", LOSSES.names())
def test_registered_loss_half_logits_compute_in_float32(name: str) -> None:
    info = get_loss_info(name)
    cfg = create_loss_cfg(name, "coco", {})
    logits = torch.tensor([[0.5, -2.0], [3.0, 0.0]])
    observed = torch.tensor([[1, 0], [0, 1]])
    pseudo = torch.tensor([[0, 1], [-1, 0]], dtype=torch.int8)
    state = state_kwargs(info, observed)
    full = info.fn(logits=logits, observed=observed, pseudo=pseudo, epoch=E1, cfg=cfg, **state)
    half = info.fn(logits=logits.half(), observed=observed, pseudo=pseudo, epoch=E1, cfg=cfg, **state)
    assert half.cells.dtype == torch.float32
    torch.testing.assert_close(half.cells, full.cells, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="observed shape"):
        info.fn(logits=logits, observed=observed[:1], pseudo=pseudo, epoch=E1, cfg=cfg, **state)
