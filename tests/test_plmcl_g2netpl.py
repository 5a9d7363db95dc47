"""PLMCL and G2NetPL label states (docs/methods.md §5): update rules by hand, the scheduler, ablations, saving, storage,
teacher initialisation, and that both beat AN on a small digits world at 30% partial labels."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from mlpl.config import resolve_train_cfg
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.schemas.state import load_state
from mlpl.stages.train.labelstate import LabelStateContext, RowTable, create_label_state
from mlpl.stages.train.labelstate.g2netpl import game_gradient, game_steps
from mlpl.stages.train.labelstate.soft_labels import TEACHER_CLIP, confidence_threshold, confidence_weight
from mlpl.stages.train.losses import EpochState, make_output

from tests.conftest import run_cli

CPU = torch.device("cpu")


def make_ctx(observed, num_epochs: int = 10, read_sims=None) -> LabelStateContext:
    return LabelStateContext(observed=np.asarray(observed, dtype=np.int8), family="digits", seed=0, device=CPU,
                             read_sims=read_sims, num_epochs=num_epochs)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def step(state, probs, observed, epoch: int = 1, num_epochs: int = 10, rows=None) -> None:
    """One `after_step` with logits whose sigmoid is `probs`."""
    logits = torch.tensor([[logit(p) for p in row] for row in probs], dtype=torch.float64)
    observed = torch.as_tensor(np.asarray(observed), dtype=torch.long)
    rows = torch.arange(len(probs)) if rows is None else torch.as_tensor(rows)
    state.after_step(rows=rows, logits=logits, observed=observed, out=make_output(torch.zeros(logits.shape)),
                     epoch=EpochState(epoch=epoch, num_epochs=num_epochs))


def clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


# ------------------------------------------------------------------------------------------- PLMCL
# cells: unknown from 0.5, unknown pushed past 1, unknown pushed past 0, observed +1, observed −1
PLMCL_OBSERVED = [[0, 0, 0, 1, -1]]


def plmcl_state(**params):
    state = create_label_state("plmcl", make_ctx(PLMCL_OBSERVED), {"momentum": 0.5, "step": 0.25, **params})
    state.tables["labels"].data[0, :3] = torch.tensor([0.5, 0.95, 0.03])
    if "velocity" in state.tables:
        state.tables["velocity"].data[0, :3] = torch.tensor([0.0, 0.04, -0.05])
    return state


def test_plmcl_heavy_ball_two_steps_by_hand():
    mu, eta = 0.5, 0.25
    state = plmcl_state()
    y, v = [0.5, 0.95, 0.03], [0.0, 0.04, -0.05]
    for probs in ([0.9, 0.99, 0.01], [0.2, 0.6, 0.4]):
        step(state, [probs + [0.3, 0.7]], PLMCL_OBSERVED)
        v = [mu * v[c] + eta * (probs[c] - y[c]) for c in range(3)]
        y = [clip01(y[c] + v[c]) for c in range(3)]
        assert state.tables["labels"].data[0, :3].tolist() == pytest.approx(y, abs=1e-6)
        assert state.tables["velocity"].data[0, :3].tolist() == pytest.approx(v, abs=1e-6)
    # first step clipped cell 1 at 1 and cell 2 at 0; the second step's velocity carried their momentum
    # (v kept unclipped) and moved them off the bounds
    assert 0 < y[1] < 1 and 0 < y[2] < 1
    # observed cells keep their values, velocity 0
    assert state.tables["labels"].data[0, 3:].tolist() == [1.0, 0.0]
    assert state.tables["velocity"].data[0, 3:].tolist() == [0.0, 0.0]


def test_plmcl_clips_at_both_bounds():
    state = plmcl_state(step=1.0)
    step(state, [[0.9, 0.99, 0.01, 0.3, 0.7]], PLMCL_OBSERVED)
    v1 = 0.5 * 0.04 + 1.0 * (0.99 - 0.95)
    v2 = 0.5 * -0.05 + 1.0 * (0.01 - 0.03)
    assert 0.95 + v1 > 1 and 0.03 + v2 < 0
    assert state.tables["labels"].data[0, 1:3].tolist() == [1.0, 0.0]
    assert state.tables["velocity"].data[0, 1:3].tolist() == pytest.approx([v1, v2], abs=1e-6)


def test_plmcl_without_momentum_is_a_plain_step():
    eta = 0.25
    state = plmcl_state(momentum=0.0)
    y = [0.5, 0.95, 0.03]
    for probs in ([0.9, 0.99, 0.01], [0.2, 0.6, 0.4]):
        step(state, [probs + [0.3, 0.7]], PLMCL_OBSERVED)
        v = [eta * (probs[c] - y[c]) for c in range(3)]  # no memory of the earlier velocity
        y = [clip01(y[c] + v[c]) for c in range(3)]
        assert state.tables["labels"].data[0, :3].tolist() == pytest.approx(y, abs=1e-6)
        assert state.tables["velocity"].data[0, :3].tolist() == pytest.approx(v, abs=1e-6)
    full = plmcl_state()
    step(full, [[0.9, 0.99, 0.01, 0.3, 0.7]], PLMCL_OBSERVED)
    assert not torch.equal(full.tables["labels"].data, state.tables["labels"].data)


def test_plmcl_without_velocity_sets_labels_to_the_prediction():
    state = plmcl_state(velocity=False)
    assert set(state.tables) == {"labels"}  # no velocity state at all
    probs = [0.9, 0.99, 0.01]
    step(state, [probs + [0.3, 0.7]], PLMCL_OBSERVED)
    assert state.tables["labels"].data[0].tolist() == pytest.approx(probs + [1.0, 0.0], abs=1e-6)
    # momentum and step play no part
    other = plmcl_state(velocity=False, momentum=0.0, step=1.0)
    step(other, [probs + [0.3, 0.7]], PLMCL_OBSERVED)
    assert torch.equal(other.tables["labels"].data, state.tables["labels"].data)


def test_plmcl_updates_only_the_batch_rows():
    ctx = make_ctx([[0, 0], [0, 0], [0, 1]])
    state = create_label_state("plmcl", ctx, {})
    step(state, [[0.9, 0.1]], [[0, 0]], rows=[1])
    labels = state.tables["labels"].data
    assert labels[0].tolist() == [0.5, 0.5] and labels[2].tolist() == [0.5, 1.0]
    assert labels[1, 0] > 0.5 > labels[1, 1]


# ------------------------------------------------------------------------------------------- G2NetPL
def g2_hand_gradient(y: float, p: float, eta: float) -> float:
    """dJ/dz for J = H_b(ŷ) + η|ŷ − p|, ŷ = sigmoid(z): H_b'(ŷ)·ŷ(1−ŷ) + η·sign(ŷ − p)·ŷ(1−ŷ)."""
    sign = (y > p) - (y < p)
    return y * (1 - y) * (math.log((1 - y) / y) + eta * sign)


G2_Y = [0.7, 0.2, 0.55]  # above p, below p, above p inside the penalty's band
G2_P = [0.4, 0.6, 0.5]


def test_g2netpl_gradient_by_hand_and_by_autograd():
    eta = 1.5
    z = torch.tensor([logit(y) for y in G2_Y], dtype=torch.float64, requires_grad=True)
    probs = torch.tensor(G2_P, dtype=torch.float64)
    grad = game_gradient(z.detach(), probs, eta)
    assert grad.tolist() == pytest.approx([g2_hand_gradient(y, p, eta) for y, p in zip(G2_Y, G2_P)], abs=1e-12)
    # the same as differentiating J(sigmoid(z)) directly
    y = torch.sigmoid(z)
    cost = (-(y * torch.log(y) + (1 - y) * torch.log(1 - y)) + eta * (y - probs).abs()).sum()
    cost.backward()
    assert grad.tolist() == pytest.approx(z.grad.tolist(), abs=1e-12)
    # signs: above p the penalty pulls down, below p up; in cell 0 the entropy (z > 0 pushes up) loses to η
    assert grad[0] > 0 and grad[1] < 0


def test_g2netpl_one_step_through_the_state():
    eta, lr = 1.5, 2.0
    observed = [[0, 0, 0, -1]]
    state = create_label_state("g2netpl", make_ctx(observed),
                               {"penalty": eta, "label_lr": lr, "inner_steps": 1})
    state.tables["logits"].data[0, :3] = torch.tensor([logit(y) for y in G2_Y])
    before_observed = state.tables["logits"].data[0, 3].item()
    step(state, [G2_P + [0.9]], observed)
    expected = [logit(y) - lr * g2_hand_gradient(y, p, eta) for y, p in zip(G2_Y, G2_P)]
    assert state.tables["logits"].data[0, :3].tolist() == pytest.approx(expected, abs=1e-5)
    labels = state.soft_labels(torch.tensor([0]))[0].tolist()
    assert labels[0] < G2_Y[0] and labels[1] > G2_Y[1]  # both moved toward p
    assert labels[3] == 0.0 and state.tables["logits"].data[0, 3].item() == before_observed


def test_g2netpl_inner_steps_repeat_the_step():
    z = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    probs = torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64)
    twice = game_steps(game_steps(z, probs, 1.0, 0.5, 1), probs, 1.0, 0.5, 1)
    assert torch.equal(game_steps(z, probs, 1.0, 0.5, 2), twice)
    state = create_label_state("g2netpl", make_ctx([[0, 0, 0]]), {"label_lr": 0.5, "inner_steps": 3})
    state.tables["logits"].data[0] = z.float()
    step(state, [probs.tolist()], [[0, 0, 0]])
    expected = game_steps(z.float(), probs.float(), 1.0, 0.5, 3)
    assert torch.allclose(state.tables["logits"].data[0], expected, atol=1e-6)


def test_g2netpl_without_penalty_ignores_the_network():
    state = create_label_state("g2netpl", make_ctx([[0, 0, 0]]), {"penalty": 0.0})
    state.tables["logits"].data[0, 1:] = torch.tensor([0.4, -0.4])
    step(state, [[0.99, 0.01, 0.99]], [[0, 0, 0]])
    z = state.tables["logits"].data[0].tolist()
    # 0.5 is the entropy's stationary point: it stays; the others move away from 0.5 whatever p says
    assert z[0] == 0.0 and z[1] > 0.4 and z[2] < -0.4
    full = create_label_state("g2netpl", make_ctx([[0, 0, 0]]), {})
    step(full, [[0.99, 0.01, 0.99]], [[0, 0, 0]])
    assert full.tables["logits"].data[0, 0] > 0  # with the penalty 0.5 follows p


# ------------------------------------------------------------------------------------------- scheduler
def test_threshold_at_start_middle_end():
    assert confidence_threshold(1, 10, 0.25) == 0.25
    assert confidence_threshold(10, 10, 0.25) == 0.0
    assert confidence_threshold(3, 5, 0.25) == 0.125  # t = 2/4
    assert confidence_threshold(2, 5, 0.25) == pytest.approx(0.25 * 3 / 4)
    assert confidence_threshold(1, 1, 0.25) == 0.0  # one epoch: the last epoch weights every cell
    with pytest.raises(ValueError):
        confidence_threshold(11, 10, 0.25)


def test_weights_hard_smooth_off():
    labels = torch.tensor([0.5, 0.625, 0.375, 0.75, 0.25, 1.0, 0.0, 0.7], dtype=torch.float64)
    tau = 0.25
    distance = [abs(y - 0.5) for y in labels.tolist()]
    hard = confidence_weight(labels, tau, "hard")
    assert hard.tolist() == [1.0 if d >= tau else 0.0 for d in distance]
    assert hard.tolist()[3:5] == [1.0, 1.0]  # exactly at the threshold counts (≥)
    smooth = confidence_weight(labels, tau, "smooth")
    assert smooth.tolist() == pytest.approx([min(1.0, d / tau) for d in distance])
    assert confidence_weight(labels, tau, "off").tolist() == [1.0] * 8
    for mode in ("hard", "smooth", "off"):  # τ = 0: every cell counts
        assert confidence_weight(labels, 0.0, mode).tolist() == [1.0] * 8


def test_batch_state_follows_the_epoch():
    state = create_label_state("plmcl", make_ctx([[0, 0, 1]], num_epochs=3), {"tau0": 0.25})
    state.tables["labels"].data[0, 1] = 0.875
    rows = torch.tensor([0])
    view = state.batch_state(rows, CPU)
    assert view["target"].tolist() == [[0.5, 0.875, 1.0]]
    assert view["weight"].tolist() == [[0.0, 1.0, 1.0]]  # epoch 1: τ = 0.25
    state.end_epoch(epoch=EpochState(1, 3), rows=None, probs=None)
    assert state.epoch == 2 and state.threshold() == 0.125
    state.end_epoch(epoch=EpochState(2, 3), rows=None, probs=None)
    assert state.batch_state(rows, CPU)["weight"][0, 0] == 1.0  # last epoch: τ = 0
    step(state, [[0.5, 0.5, 0.5]], [[0, 0, 1]], epoch=1, num_epochs=3)
    assert state.epoch == 1  # the loop's epoch wins


def test_scheduler_off_weights_everything_from_the_start():
    state = create_label_state("g2netpl", make_ctx([[0, 0]]), {"scheduler": "off"})
    assert state.batch_state(torch.tensor([0]), CPU)["weight"].tolist() == [[1.0, 1.0]]
    hard = create_label_state("g2netpl", make_ctx([[0, 0]]), {})
    assert hard.batch_state(torch.tensor([0]), CPU)["weight"].tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("ablation, parent, change", [
    ("plmcl-no-momentum", "plmcl", {"momentum": 0.0}),
    ("plmcl-no-velocity", "plmcl", {"velocity": False}),
    ("g2netpl-eta0", "g2netpl", {"penalty": 0.0}),
    ("g2netpl-no-scheduler", "g2netpl", {"scheduler": "off"}),
])
@pytest.mark.parametrize("dataset", ["coco", "digits"])
def test_ablation_presets_change_exactly_one_switch(ablation, parent, change, dataset):
    a = dataclasses.asdict(resolve_train_cfg(ablation, "d", dataset, "o"))
    b = dataclasses.asdict(resolve_train_cfg(parent, "d", dataset, "o"))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"method", "description", "reference", "label_state_params"}
    assert a["label_state_params"] == {**b["label_state_params"], **change}
    ctx = make_ctx([[0, 1]])
    cfg_a = create_label_state(a["label_state"], ctx, a["label_state_params"]).cfg
    cfg_b = create_label_state(b["label_state"], ctx, b["label_state_params"]).cfg
    assert {f: v for f, v in dataclasses.asdict(cfg_a).items() if v != getattr(cfg_b, f)} == change


# ------------------------------------------------------------------------------------------- saving, storage
@pytest.mark.parametrize("name", ["plmcl", "g2netpl"])
def test_save_load_round_trip(name):
    observed = [[0, 0, 1], [0, -1, 0]]
    state = create_label_state(name, make_ctx(observed), {})
    step(state, [[0.9, 0.2, 0.6], [0.3, 0.4, 0.8]], observed, epoch=4)
    state.end_epoch(epoch=EpochState(4, 10), rows=None, probs=None)
    saved = {k: v.clone() for k, v in state.state_dict().items()}
    fresh = create_label_state(name, make_ctx(observed), {})
    fresh.load_state_dict(saved)
    assert fresh.epoch == 5
    for key, table in state.tables.items():
        assert torch.equal(fresh.tables[key].data, table.data)
    assert np.array_equal(fresh.labels(), state.labels())
    with pytest.raises(ValueError, match="epoch"):
        fresh.load_state_dict({k: v for k, v in saved.items() if k != "epoch"})


@pytest.mark.parametrize("name, params, tables", [
    ("plmcl", {}, {"labels", "velocity"}),
    ("plmcl", {"velocity": False}, {"labels"}),
    ("g2netpl", {}, {"logits"}),
])
def test_tables_are_float32(name, params, tables):
    n, c = 7, 5
    state = create_label_state(name, make_ctx(np.zeros((n, c))), params)
    assert set(state.tables) == tables
    assert all(t.data.dtype == torch.float32 for t in state.tables.values())
    assert state.memory_bytes() == len(tables) * n * c * 4


def test_float32_keeps_small_steps_that_float16_loses():
    # a label at 0.999 pulled toward p ≈ 1 by steps of η·(p − ŷ) ≈ 1e-5: float32 accumulates them,
    # float16 (spacing 2^-11 ≈ 4.9e-4 below 1) rounds every one away
    state = create_label_state("plmcl", make_ctx([[0]]), {"momentum": 0.0, "step": 0.01})
    state.tables["labels"].data[0, 0] = 0.999
    start = state.tables["labels"].data[0, 0].item()
    y = start
    for _ in range(20):
        step(state, [[1 - 1e-7]], [[0]])
        y += 0.01 * (1 - 1e-7 - y)
    assert state.tables["labels"].data[0, 0].item() == pytest.approx(y, abs=1e-6)
    assert y - start > 1.5e-4
    half = RowTable(np.array([[0.999]]), dtype=torch.float16)
    for _ in range(20):
        value = half[[0]]
        half[[0]] = value + 0.01 * (1 - value)
    assert half.data[0, 0].item() == torch.tensor(0.999, dtype=torch.float16).item()


# ------------------------------------------------------------------------------------------- initialisation
def fake_sims(n: int, c: int, views: int = 2):
    rng = np.random.RandomState(0)
    sims = (0.2 + 0.1 * rng.rand(n, views, c)).astype(np.float32)
    sims[1] = np.nan  # an unreadable image

    def read(seed_index: int):
        assert seed_index == 0
        yield np.arange(0, 2), sims[:2]
        yield np.arange(2, n), sims[2:]

    return sims, read


@pytest.mark.parametrize("name", ["plmcl", "g2netpl"])
def test_teacher_init(name):
    observed = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, -1, 0, 0]])
    sims, read = fake_sims(3, 4)
    state = create_label_state(name, make_ctx(observed, read_sims=read), {"init": "teacher", "teacher_tau": 0.02})
    labels = state.labels()
    for r in (0, 2):
        scores = [math.exp(s / 0.02) for s in sims[r, 0]]
        for c in range(4):
            want = min(1 - TEACHER_CLIP, max(TEACHER_CLIP, scores[c] / sum(scores)))
            if observed[r, c]:
                want = 1.0 if observed[r, c] == 1 else 0.0
            assert labels[r, c] == pytest.approx(want, abs=1e-5)
    assert labels[1].tolist() == pytest.approx([0.5] * 4)


@pytest.mark.parametrize("name", ["plmcl", "g2netpl"])
def test_teacher_init_without_a_store_is_refused(name):
    with pytest.raises(InputError, match="init = 'teacher'"):
        create_label_state(name, make_ctx([[0, 0]]), {"init": "teacher"})
    assert create_label_state(name, make_ctx([[0, 1]]), {}).labels().tolist() == [[0.5, 1.0]]


@pytest.mark.parametrize("name, bad", [
    ("plmcl", {"tau0": 0.6}), ("plmcl", {"momentum": 1.0}), ("plmcl", {"step": 0.0}), ("plmcl", {"init": "zero"}),
    ("plmcl", {"scheduler": "linear"}), ("g2netpl", {"penalty": -1.0}), ("g2netpl", {"label_lr": 0.0}),
    ("g2netpl", {"inner_steps": 0}), ("g2netpl", {"teacher_tau": 0.0}),
])
def test_bad_options_are_refused(name, bad):
    with pytest.raises(InputError):
        create_label_state(name, make_ctx([[0, 0]]), bad)


# ------------------------------------------------------------------------------------------- learning
def test_teacher_init_end_to_end_reads_the_store(digits_methods, methods_store, tmp_path, capsys):
    preset = tmp_path / "teacher.toml"
    preset.write_text('[label_state_params]\ninit = "teacher"\n')
    tiny = ["--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "2",
            "--preset", preset]
    base = ["train", "--dataset", digits_methods, "--method", "g2netpl", *tiny]
    # init = 'teacher' makes the label state read the store: without one the run is refused, naming the option
    assert run_cli([*base, "--out", tmp_path / "refused"]) == 2
    assert "--pseudo-store" in capsys.readouterr().err
    # with the store the labels start from the oracle's global view
    assert run_cli([*base, "--pseudo-store", methods_store, "--out", tmp_path / "run"]) == 0
    assert run_schema.validate(tmp_path / "run").epochs_run == 1
    from mlpl.schemas.dataset import open_dataset

    ds = open_dataset(digits_methods)
    z = load_state(tmp_path / "run" / "last.pt")["label_state"]["logits"]
    n, c = z.shape
    truth = ds.labels.matrix(np.arange(n)).astype(bool)
    obs = ds.observations("partial-0.5")
    unknown = np.ones((n, c), dtype=bool)
    unknown[obs.row[obs.row < n]] = obs.matrix(c)[obs.row < n] == 0
    labels = torch.sigmoid(z).numpy()
    # the oracle's similarities separate present digits: their labels start far above absent ones' (0.5 both
    # with init = "half")
    assert labels[truth & unknown].mean() > 0.2 > 0.05 > labels[~truth & unknown].mean()
