"""Golden-value tests of the entropy family: `em` (docs/methods.md §3.1), `em-apl` (docs/methods.md §3.3), `vlpl`
(docs/methods.md §3.8)."""

from __future__ import annotations

import math

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.losses import EpochState, create_loss_cfg, get_loss_info

# Expected values are computed here from docs/methods.md's formulas with `math`, independently of the code.
EPS = 1e-5
E1 = EpochState(epoch=1, num_epochs=10)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def nlog(x: float) -> float:
    return -math.log(x + EPS)


def neg_entropy(p: float, alpha: float) -> float:
    """−α·H(p), H(p) = −p·log(p+ε) − (1−p)·log(1−p+ε)."""
    entropy = -p * math.log(p + EPS) - (1 - p) * math.log(1 - p + EPS)
    return -alpha * entropy


def run(name: str, logits, observed, pseudo=None, dataset: str = "voc", state=None, **overrides):
    info = get_loss_info(name)
    extra = {} if state is None else {"state": state}
    return info.fn(logits=torch.tensor(logits, dtype=torch.float64),
                   observed=torch.tensor(observed, dtype=torch.int64),
                   pseudo=None if pseudo is None else torch.tensor(pseudo, dtype=torch.int8),
                   epoch=E1, cfg=create_loss_cfg(name, dataset, overrides), **extra)


def assert_cells(out, expected: list[list[float]]) -> None:
    for row, expected_row in zip(out.cells.tolist(), expected):
        assert row == pytest.approx(expected_row, rel=1e-9, abs=1e-12)
    flat = [v for row in expected for v in row]
    assert out.regulariser.item() == 0.0
    assert out.total.item() == pytest.approx(sum(flat) / len(flat), rel=1e-9)


LOGITS = [[0.5, -1.0, 2.0, 0.0], [1.5, 3.0, -2.0, -0.3]]
OBSERVED = [[1, 0, -1, 0], [0, 0, 1, -1]]


# --- em -------------------------------------------------------------------------------------------------

def test_em_every_label_case_voc() -> None:
    a = 0.2
    out = run("em", LOGITS, OBSERVED, dataset="voc")
    assert_cells(out, [
        [nlog(sig(0.5)), neg_entropy(sig(-1.0), a), nlog(1 - sig(2.0)), neg_entropy(0.5, a)],
        [neg_entropy(sig(1.5), a), neg_entropy(sig(3.0), a), nlog(sig(-2.0)), nlog(1 - sig(-0.3))],
    ])


def test_em_ignores_pseudo_labels() -> None:
    plain = run("em", LOGITS, OBSERVED, dataset="coco")
    with_pseudo = run("em", LOGITS, OBSERVED, pseudo=[[1, 1, 1, -1], [-1, 1, 0, 1]], dataset="coco")
    assert torch.equal(plain.cells, with_pseudo.cells)


def test_em_total_can_be_negative() -> None:
    # one confident observed positive, every other cell unknown: the entropy terms dominate
    logits = [[6.0, 0.0, 0.2, -0.1], [0.0, 0.3, 5.0, 0.0]]
    observed = [[1, 0, 0, 0], [0, 0, 1, 0]]
    a = 0.1
    out = run("em", logits, observed, dataset="coco")
    expected = [[nlog(sig(6.0)), neg_entropy(0.5, a), neg_entropy(sig(0.2), a), neg_entropy(sig(-0.1), a)],
                [neg_entropy(0.5, a), neg_entropy(sig(0.3), a), nlog(sig(5.0)), neg_entropy(0.5, a)]]
    assert_cells(out, expected)
    assert out.total.item() < 0
    assert out.total.item() == pytest.approx(sum(sum(r) for r in expected) / 8, rel=1e-9)


def test_em_gradient_pushes_unknown_predictions_toward_one_half() -> None:
    # d/ds of −α·H(sigmoid(s)): −α·H'(p)·p(1−p), H'(p) = −log(p+ε) − p/(p+ε) + log(1−p+ε) + (1−p)/(1−p+ε)
    a = 0.2
    logits = torch.tensor([[1.2, -0.7]], dtype=torch.float64, requires_grad=True)
    info = get_loss_info("em")
    out = info.fn(logits=logits, observed=torch.tensor([[0, 0]]), pseudo=None, epoch=E1,
                  cfg=create_loss_cfg("em", "voc", {}))
    out.total.backward()
    expected = []
    for s in (1.2, -0.7):
        p = sig(s)
        dh = -math.log(p + EPS) - p / (p + EPS) + math.log(1 - p + EPS) + (1 - p) / (1 - p + EPS)
        expected.append(-a * dh * p * (1 - p) / 2)  # mean over 2 cells
    assert logits.grad[0].tolist() == pytest.approx(expected, rel=1e-9)
    assert logits.grad[0, 0] > 0 > logits.grad[0, 1]  # descent moves both logits toward 0


@pytest.mark.parametrize("dataset, alpha", [("voc", 0.2), ("coco", 0.1), ("nus", 0.1), ("cub", 0.01),
                                            ("digits", 0.2)])
def test_em_alpha_per_dataset(dataset: str, alpha: float) -> None:
    assert create_loss_cfg("em", dataset, {}).alpha == alpha
    assert create_loss_cfg("vlpl", dataset, {}).alpha == alpha
    assert create_loss_cfg("em-apl", dataset, {}).alpha == alpha


def test_entropy_configs_are_checked() -> None:
    with pytest.raises(InputError, match="alpha"):
        create_loss_cfg("em", "voc", {"alpha": -0.1})
    with pytest.raises(InputError, match="beta"):
        create_loss_cfg("em-apl", "voc", {"beta": -1})
    with pytest.raises(InputError, match="positive_target"):
        create_loss_cfg("vlpl", "voc", {"positive_target": 1.5})


# --- vlpl -----------------------------------------------------------------------------------------------

def test_vlpl_every_label_case_coco() -> None:
    a = 0.1

    def positive(p: float) -> float:
        return 0.7 * (0.9 * nlog(p) + 0.1 * nlog(1 - p))

    # row 0: observed +1 with pseudo −1 (observed wins); unknown + pseudo +1; observed −1 with pseudo +1
    #        (observed wins: nlog(1−p)); unknown + pseudo −1 (no term)
    # row 1: unknown + pseudo 0 (entropy); unknown + pseudo +1; observed +1; unknown + pseudo 0
    logits = [[0.5, -1.0, 2.0, 0.0], [1.5, 3.0, -2.0, -0.3]]
    observed = [[1, 0, -1, 0], [0, 0, 1, 0]]
    pseudo = [[-1, 1, 1, -1], [0, 1, 0, 0]]
    out = run("vlpl", logits, observed, pseudo=pseudo, dataset="coco")
    assert_cells(out, [
        [nlog(sig(0.5)), positive(sig(-1.0)), nlog(1 - sig(2.0)), 0.0],
        [neg_entropy(sig(1.5), a), positive(sig(3.0)), nlog(sig(-2.0)), neg_entropy(sig(-0.3), a)],
    ])


def test_vlpl_cub_alpha_and_weights_are_options() -> None:
    out = run("vlpl", [[0.4, -0.2]], [[0, 0]], pseudo=[[1, 0]], dataset="cub",
              positive_weight=0.5, positive_target=0.8)
    p0, p1 = sig(0.4), sig(-0.2)
    assert_cells(out, [[0.5 * (0.8 * nlog(p0) + 0.2 * nlog(1 - p0)), neg_entropy(p1, 0.01)]])


def test_vlpl_without_positive_pseudo_labels_is_em() -> None:
    pseudo = [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(run("vlpl", LOGITS, OBSERVED, pseudo=pseudo).cells, run("em", LOGITS, OBSERVED).cells)


def test_vlpl_requires_pseudo_labels() -> None:
    assert get_loss_info("vlpl").needs_pseudo
    with pytest.raises(ValueError, match="needs pseudo-labels"):
        run("vlpl", LOGITS, OBSERVED)


# --- em-apl ---------------------------------------------------------------------------------------------

def apl_state(soft: list[list[bool]], target: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"soft_negative": torch.tensor(soft), "target": torch.tensor(target, dtype=torch.float64)}


def test_em_apl_every_label_case_coco() -> None:
    a, b = 0.1, 0.9

    def soft_negative(p: float, p_old: float) -> float:
        return b * (p_old * nlog(p) + (1 - p_old) * nlog(1 - p))

    # (0,0) observed +1 flagged: observed wins; (0,1) soft negative; (0,2) observed −1; (0,3) unknown
    # (1,0) soft negative with p_old 0; (1,1) unknown; (1,2) observed +1; (1,3) observed −1 flagged: observed wins
    soft = [[True, True, False, False], [True, False, False, True]]
    target = [[0.3, 0.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7]]
    out = run("em-apl", LOGITS, OBSERVED, dataset="coco", state=apl_state(soft, target))
    assert_cells(out, [
        [nlog(sig(0.5)), soft_negative(sig(-1.0), 0.05), nlog(1 - sig(2.0)), neg_entropy(0.5, a)],
        [soft_negative(sig(1.5), 0.0), neg_entropy(sig(3.0), a), nlog(sig(-2.0)), nlog(1 - sig(-0.3))],
    ])


def test_em_apl_total_can_be_negative() -> None:
    logits = [[4.0, 0.1, -0.2], [0.0, -5.0, 0.3]]
    observed = [[1, 0, 0], [0, 0, 0]]
    soft = [[False, False, False], [False, True, False]]
    target = [[0.0, 0.0, 0.0], [0.0, 0.01, 0.0]]
    a, b = 0.2, 0.02
    out = run("em-apl", logits, observed, dataset="voc", state=apl_state(soft, target))
    p = sig(-5.0)
    expected = [[nlog(sig(4.0)), neg_entropy(sig(0.1), a), neg_entropy(sig(-0.2), a)],
                [neg_entropy(0.5, a), b * (0.01 * nlog(p) + 0.99 * nlog(1 - p)), neg_entropy(sig(0.3), a)]]
    assert_cells(out, expected)
    assert out.total.item() < 0


def test_em_apl_without_soft_negatives_is_em() -> None:
    none = apl_state([[False] * 4] * 2, [[0.0] * 4] * 2)
    assert torch.equal(run("em-apl", LOGITS, OBSERVED, dataset="nus", state=none).cells,
                       run("em", LOGITS, OBSERVED, dataset="nus").cells)


def test_em_apl_target_is_not_differentiated() -> None:
    target = torch.tensor([[0.2, 0.0]], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([[-1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    out = get_loss_info("em-apl").fn(logits=logits, observed=torch.tensor([[0, 0]]), pseudo=None, epoch=E1,
                                     cfg=create_loss_cfg("em-apl", "cub", {}),
                                     state={"soft_negative": torch.tensor([[True, False]]), "target": target})
    out.total.backward()
    assert target.grad is None and logits.grad is not None
    p = sig(-1.0)
    # d/ds β·(t·nlog(p) + (1−t)·nlog(1−p)) = β·(−t·(1−p)·p/(p+ε) + (1−t)·p(1−p)/(1−p+ε)), over 2 cells
    expected = 0.4 * (-0.2 * p * (1 - p) / (p + EPS) + 0.8 * p * (1 - p) / (1 - p + EPS)) / 2
    assert logits.grad[0, 0].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dataset, beta", [("voc", 0.02), ("coco", 0.9), ("nus", 0.2), ("cub", 0.4),
                                           ("digits", 0.02)])
def test_em_apl_beta_per_dataset(dataset: str, beta: float) -> None:
    assert create_loss_cfg("em-apl", dataset, {}).beta == beta
    assert get_loss_info("em-apl").label_states == ("apl",)


def test_em_apl_state_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="state soft_negative"):
        run("em-apl", LOGITS, OBSERVED, state=apl_state([[False] * 3] * 2, [[0.0] * 3] * 2))
