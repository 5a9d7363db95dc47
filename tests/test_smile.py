"""SMILE (docs/methods.md §3.9): the loss's terms against hand computation, the feature graph, the head."""

from __future__ import annotations

import math

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.losses import EpochState, create_loss_cfg
from mlpl.stages.train.losses.smile import SmileCfg, beta_kl, knn_adjacency, smile
from mlpl.stages.train.models import create_classifier, create_head_cfg, param_groups
from scipy.special import digamma

from tests.conftest import run_cli

LOG3 = math.log(3.0)


def nlog(x: float) -> float:
    return -math.log(x + 1e-5)


def test_knn_adjacency_golden() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # k = 2 nearest, never itself: 0 → {1, 3}, 1 → {0, 3}, 3 → {1, 0}, 7 → {3, 1}
    expected = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(knn_adjacency(points, 2), expected)
    torch.testing.assert_close(knn_adjacency(points[:2], 3), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # k ≤ B − 1
    assert knn_adjacency(points[:1], 3).sum() == 0


def test_beta_kl_golden() -> None:
    half = torch.tensor([0.5])
    # KL(Beta(½, ½) ‖ U(0, 1)) is minus the arcsine distribution's entropy ln(π/4)
    assert beta_kl(half, "exact").item() == pytest.approx(-math.log(math.pi / 4), abs=1e-5)
    # the reference's expression at a = b = ½ + 1e-6 (its eps): 2·lgamma(a) + 2·(a − 1)·ψ(a) ≈ ln π − ψ(½)
    a = 0.5 + 1e-6
    assert beta_kl(half, "reference").item() == pytest.approx(2 * math.lgamma(a) + 2 * (a - 1) * digamma(a), abs=1e-6)
    assert beta_kl(half, "reference").item() == pytest.approx(math.log(math.pi) - digamma(0.5), abs=1e-4)
    assert beta_kl(torch.tensor([0.25, 0.75]), "exact").item() == pytest.approx(
        beta_kl(torch.tensor([0.75]), "exact").item(), abs=1e-6)  # symmetric in d ↔ 1 − d


def _batch() -> dict[str, torch.Tensor]:
    return {
        "logits": torch.tensor([[0.0, 0.0, 0.0], [LOG3, 0.0, -LOG3]], requires_grad=True),  # ŷ: ½ ½ ½ / ¾ ½ ¼
        "label_logits": torch.tensor([[0.0, LOG3, -LOG3], [0.0, 0.0, 0.0]], requires_grad=True),  # d: ½ ¾ ¼ / ½ ½ ½
        "features": torch.tensor([[0.0, 0.0], [1.0, 0.0]]),
        "rec_features": torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
        "rec_labels": torch.full((2, 3), 0.5),
    }


def _loss(cfg: SmileCfg, epoch: int = 1):
    b = _batch()
    observed = torch.tensor([[1, 0, 0], [0, -1, 1]])
    head = {k: b[k] for k in ("label_logits", "features", "rec_features", "rec_labels")}
    return b, smile(logits=b["logits"], observed=observed, pseudo=None, epoch=EpochState(epoch, 2), cfg=cfg,
                    head=head)


def test_smile_loss_golden() -> None:
    cfg = SmileCfg(p=0.1, mu=0.5, gamma=0.01, delta=0.1, rate=0.5)
    _, out = _loss(cfg)
    scores = [[0.5, 0.5, 0.5], [0.75, 0.5, 0.25]]
    dist = [[0.5, 0.75, 0.25], [0.5, 0.5, 0.5]]
    # D = ½·d + ½·prior with prior 1 (positive), 0.1 (unknown), 0 (observed negative)
    enhanced = [[0.75, 0.425, 0.175], [0.3, 0.25, 0.75]]
    unknown = [[False, True, True], [True, False, False]]
    cells = [[(e * nlog(s) + (1 - e) * nlog(1 - s)) * (0.5 if u else 1.0) for e, s, u in zip(er, sr, ur)]
             for er, sr, ur in zip(enhanced, scores, unknown)]
    torch.testing.assert_close(out.cells, torch.tensor(cells), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.aux["enhanced"], torch.tensor(enhanced))
    likelihood = (nlog(0.5) + nlog(0.25) + nlog(0.75) + nlog(0.5) + nlog(0.5) + nlog(0.5)) / 6
    rec_x = (0 + 1 + 0 + 1) / 4  # features [[0, 0], [1, 0]] against [[0, 1], [1, 1]]
    rec_y = nlog(0.5)  # every cell ½: nlog(½) whether positive or not
    rec_graph = (0.75 ** 2 * 2 + 0.25 ** 2 * 2) / 4  # ŷ_rec·ŷ_recᵀ = ¾ everywhere; graph [[0, 1], [1, 0]]

    def reference_kl(d: float) -> float:
        a, b = d + 1e-6, 1 - d + 1e-6
        return math.lgamma(a) + math.lgamma(b) + (a - 1) * digamma(a) + (b - 1) * digamma(b)

    kl = sum(reference_kl(d) for row in dist for d in row) / 6
    expected = likelihood + 0.01 * (rec_x + rec_y + rec_graph) + 0.1 * kl
    assert out.regulariser.item() == pytest.approx(expected, abs=1e-5)
    assert out.total.item() == pytest.approx(sum(map(sum, cells)) / 6 + expected, abs=1e-5)


def test_smile_bias_divides_unknown_cells_by_c_minus_one() -> None:
    _, scaled = _loss(SmileCfg(p=0.1, rate=0.5))
    _, biased = _loss(SmileCfg(p=0.1, rate=0.5, bias=True))
    unknown = torch.tensor([[False, True, True], [True, False, False]])
    torch.testing.assert_close(biased.cells[unknown], scaled.cells[unknown] / 0.5 / 2)
    torch.testing.assert_close(biased.cells[~unknown], scaled.cells[~unknown])


def test_smile_parts_train_disjoint_parameters() -> None:
    b, out = _loss(SmileCfg(p=0.1))
    # the classifier's targets are detached, the enhancement loss never reaches the classifier's logits
    assert torch.autograd.grad(out.cells.sum(), b["label_logits"], retain_graph=True, allow_unused=True)[0] is None
    assert torch.autograd.grad(out.regulariser, b["logits"], allow_unused=True)[0] is None


def test_smile_warm_up_is_an_for_both_parts() -> None:
    _, out = _loss(SmileCfg(p=0.1, warm_up=1), epoch=1)
    an_cells = [[nlog(0.5), nlog(0.5), nlog(0.5)], [nlog(0.25), nlog(0.5), nlog(0.25)]]  # ŷ ¾ unknown, ¼ positive
    torch.testing.assert_close(out.cells, torch.tensor(an_cells), atol=1e-6, rtol=0)
    likelihood = (nlog(0.5) + nlog(0.25) + nlog(0.75) + 3 * nlog(0.5)) / 6
    assert out.regulariser.item() == pytest.approx(likelihood, abs=1e-6)
    _, after = _loss(SmileCfg(p=0.1, warm_up=1), epoch=2)
    assert not torch.allclose(after.cells, out.cells)


def test_smile_settings_out_of_range() -> None:
    assert create_loss_cfg("smile", "voc", {}).p == pytest.approx(0.5 / 19, abs=1e-4)
    assert create_loss_cfg("smile", "cub", {}).bias is True
    for key, value, message in (("p", 1.5, r"p must be in \[0, 1\], got 1.5"), ("mu", -0.1, "mu must be in"),
                                ("rate", 0.0, "rate must be > 0"), ("knn", 0, "knn must be >= 1"),
                                ("gamma", -1.0, "gamma must be >= 0"), ("beta_kl", "paper", "must be one of")):
        with pytest.raises(InputError, match=message):
            create_loss_cfg("smile", "digits", {key: value})
    with pytest.raises(InputError, match="enhancement_lr_mult must be > 0"):
        create_head_cfg("smile", "digits", {"enhancement_lr_mult": 0.0})


def test_smile_head_outputs_and_learning_rates() -> None:
    model, _ = create_classifier("small-cnn", 4, pretrained=False, head="smile", family="voc")
    out = model(torch.randn(3, 3, 32, 32), train_outputs=True)
    assert out.logits.shape == (3, 4) and out.regulariser is None
    assert out.aux["label_logits"].shape == (3, 4) and out.aux["rec_labels"].shape == (3, 4)
    assert out.aux["features"].shape == out.aux["rec_features"].shape == (3, 64)
    assert not out.aux["features"].requires_grad  # the enhancement networks read detached features
    assert ((out.aux["rec_labels"] > 0) & (out.aux["rec_labels"] < 1)).all()
    groups = param_groups(model, 1e-5, 1.0)
    assert [g["lr"] for g in groups] == [1e-5, 1e-5, pytest.approx(1e-3)]  # voc: enhancement at 100×


def test_smile_loss_needs_the_smile_head(digits_methods, tmp_path, capsys) -> None:
    assert run_cli(["train", "--dataset", digits_methods, "--method", "smile", "--head", "linear",
                    "--out", tmp_path / "run", "--epochs", "1", "--max-batches", "1"]) == 2
    err = capsys.readouterr().err
    assert "--head linear: loss 'smile' of method 'smile' reads the head's outputs" in err
    assert "use --head ['smile']" in err


def test_smile_setting_out_of_range_from_a_preset(digits_methods, tmp_path, capsys) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text("[loss_params]\nmu = 2.0\n")
    assert run_cli(["train", "--dataset", digits_methods, "--method", "smile", "--preset", preset,
                    "--out", tmp_path / "run", "--epochs", "1", "--max-batches", "1"]) == 2
    assert "loss 'smile': mu must be in [0, 1], got 2.0" in capsys.readouterr().err
