"""Golden-value tests of the baseline losses `an-ls`, `wan`, `epr`, `bce`'s options (docs/methods.md §3.1, Cole et al.),
`partial-bce` (docs/methods.md §3.1, Durand et al.), and of the methods that use them."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch
from mlpl.config import resolve_train_cfg
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.stages.train.losses import EpochState, create_loss_cfg, get_loss_info
from mlpl.stages.train.losses.partial import label_proportion_weight

from tests.conftest import run_cli

# Expected values below are computed here from docs/methods.md's formulas with `math`, independently of the code.

E1 = EpochState(epoch=1, num_epochs=10)
EPS = 1e-5


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def nlog(x: float, eps: float = EPS) -> float:
    return -math.log(x + eps)


def run(name: str, logits: list[list[float]], observed: list[list[int]], pseudo: list[list[int]] | None = None,
        cfg: object | None = None, dataset: str | None = "voc"):
    return get_loss_info(name).fn(
        logits=torch.tensor(logits, dtype=torch.float64),
        observed=torch.tensor(observed, dtype=torch.int64),
        pseudo=None if pseudo is None else torch.tensor(pseudo, dtype=torch.int64),
        epoch=E1,
        cfg=cfg if cfg is not None else create_loss_cfg(name, dataset, {}),
    )


def assert_cells(out, expected: list[list[float]], regulariser: float = 0.0) -> None:
    for row, expected_row in zip(out.cells.tolist(), expected, strict=True):
        assert row == pytest.approx(expected_row, rel=1e-9, abs=1e-12)
    flat = [v for row in expected for v in row]
    assert out.regulariser.item() == pytest.approx(regulariser, rel=1e-9, abs=1e-15)
    assert out.total.item() == pytest.approx(sum(flat) / len(flat) + regulariser, rel=1e-9)


# Every label case in one batch: an observed positive, unknowns, an observed negative (partial regimes).
LOGITS = [[0.5, -1.0, 2.0, 0.3], [-0.7, 3.0, -2.0, 1.2]]
OBSERVED = [[1, 0, -1, 0], [0, -1, 1, 0]]
P = [[sig(x) for x in row] for row in LOGITS]


# --- an-ls ----------------------------------------------------------------------------------------------

def an_ls_positive(p: float, ls: float = 0.1) -> float:
    return (1 - ls) * nlog(p) + ls * nlog(1 - p)


def an_ls_negative(p: float, ls: float = 0.1) -> float:
    return (1 - ls) * nlog(1 - p) + ls * nlog(p)


def test_an_ls_every_label_case() -> None:
    # an observed -1 is smoothed like an unknown (AN treats both as negatives); pseudo-labels are ignored
    out = run("an-ls", LOGITS, OBSERVED, pseudo=[[1, 1, 1, 1], [1, 1, -1, -1]])
    assert_cells(out, [
        [an_ls_positive(P[0][0]), an_ls_negative(P[0][1]), an_ls_negative(P[0][2]), an_ls_negative(P[0][3])],
        [an_ls_negative(P[1][0]), an_ls_negative(P[1][1]), an_ls_positive(P[1][2]), an_ls_negative(P[1][3])],
    ])
    # the smoothed targets are 0.9 / 0.1: p = 0.9 minimises a positive's term (up to ε)
    assert an_ls_positive(0.9) < an_ls_positive(0.95) and an_ls_positive(0.9) < an_ls_positive(0.85)


def test_an_ls_smoothing_option() -> None:
    cfg = create_loss_cfg("an-ls", "cub", {"smoothing": 0.25})
    out = run("an-ls", [[1.5, -0.5]], [[1, 0]], cfg=cfg)
    assert_cells(out, [[an_ls_positive(sig(1.5), 0.25), an_ls_negative(sig(-0.5), 0.25)]])
    assert create_loss_cfg("an-ls", "coco", {}).smoothing == 0.1
    # smoothing 0 is AN
    zero = run("an-ls", LOGITS, OBSERVED, cfg=create_loss_cfg("an-ls", None, {"smoothing": 0}))
    torch.testing.assert_close(zero.cells, run("an", LOGITS, OBSERVED).cells, rtol=0, atol=0)
    for bad in (-0.1, 0.5):
        with pytest.raises(InputError, match="smoothing"):
            create_loss_cfg("an-ls", "voc", {"smoothing": bad})


# --- wan ------------------------------------------------------------------------------------------------

def test_wan_every_label_case() -> None:
    # C = 4: unknown cells are divided by C - 1 = 3; an observed -1 keeps AN's full negative term
    out = run("wan", LOGITS, OBSERVED)
    assert_cells(out, [
        [nlog(P[0][0]), nlog(1 - P[0][1]) / 3, nlog(1 - P[0][2]), nlog(1 - P[0][3]) / 3],
        [nlog(1 - P[1][0]) / 3, nlog(1 - P[1][1]), nlog(P[1][2]), nlog(1 - P[1][3]) / 3],
    ])


def test_wan_weight_follows_the_number_of_classes_and_needs_two() -> None:
    logits = [[0.2] * 10]
    observed = [[1] + [0] * 9]
    out = run("wan", logits, observed, dataset="digits")
    assert_cells(out, [[nlog(sig(0.2))] + [nlog(1 - sig(0.2)) / 9] * 9])
    with pytest.raises(ValueError, match="C >= 2"):
        run("wan", [[0.2]], [[1]])


# --- epr ------------------------------------------------------------------------------------------------

def test_epr_every_label_case_and_regulariser() -> None:
    # VOC: m = 1.5, C = 4, B = 2; unknown and observed -1 cells have no term (docs/methods.md §3.1: "others 0")
    out = run("epr", LOGITS, OBSERVED, pseudo=[[1, 1, 1, 1], [1, 1, 1, 1]])
    regulariser = ((sum(P[0]) + sum(P[1])) / 2 - 1.5) ** 2 / 4 ** 2
    assert regulariser > 1e-3  # a value that the check below can miss
    assert_cells(out, [[nlog(P[0][0]), 0.0, 0.0, 0.0], [0.0, 0.0, nlog(P[1][2]), 0.0]], regulariser)


def test_epr_observed_negative_switch() -> None:
    cfg = create_loss_cfg("epr", "coco", {"observed_negative": "negative"})
    out = run("epr", LOGITS, OBSERVED, cfg=cfg)
    regulariser = ((sum(P[0]) + sum(P[1])) / 2 - 2.9) ** 2 / 4 ** 2
    assert_cells(out, [[nlog(P[0][0]), 0.0, nlog(1 - P[0][2]), 0.0],
                       [0.0, nlog(1 - P[1][1]), nlog(P[1][2]), 0.0]], regulariser)
    with pytest.raises(InputError, match="observed_negative"):
        create_loss_cfg("epr", "coco", {"observed_negative": "positive"})


def test_epr_regulariser_gradient_is_not_detached() -> None:
    logits = torch.tensor([[0.4, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    out = get_loss_info("epr").fn(logits=logits, observed=torch.tensor([[0, 0, 0]]), pseudo=None, epoch=E1,
                                  cfg=create_loss_cfg("epr", "nus", {}))
    p = [sig(x) for x in (0.4, -1.0, 2.0)]
    assert out.regulariser.item() == pytest.approx((sum(p) - 1.9) ** 2 / 9, rel=1e-12)
    out.total.backward()
    # only the regulariser depends on the logits here: d/ds_c = 2(Σp - m)/C² · p_c(1 - p_c)
    assert logits.grad[0].tolist() == pytest.approx([2 * (sum(p) - 1.9) / 9 * q * (1 - q) for q in p], rel=1e-9)


@pytest.mark.parametrize(("dataset", "m"), [("voc", 1.5), ("coco", 2.9), ("nus", 1.9), ("cub", 31.4),
                                            ("digits", 2.5)])
def test_epr_expected_positives_per_dataset(dataset: str, m: float) -> None:
    cfg = create_loss_cfg("epr", dataset, {})
    assert cfg.m == m and cfg.observed_negative == "ignore"
    with pytest.raises(InputError, match="no default"):
        create_loss_cfg("epr", None, {})


# --- bce's options --------------------------------------------------------------------------------------

def test_bce_undefined_ignore_is_the_default() -> None:
    cfg = create_loss_cfg("bce", "coco", {})
    assert (cfg.undefined, cfg.eps) == ("ignore", 1e-5)
    # unknown cells: pseudo +1 → positive, -1 → negative, 0 → no term; observed cells ignore the pseudo-label
    pseudo = [[-1, 1, 1, 0], [-1, 1, 0, 0]]
    out = run("bce", LOGITS, OBSERVED, pseudo, cfg=cfg)
    assert_cells(out, [[nlog(P[0][0]), nlog(P[0][1]), nlog(1 - P[0][2]), 0.0],
                       [nlog(1 - P[1][0]), nlog(1 - P[1][1]), nlog(P[1][2]), 0.0]])


def test_bce_undefined_negative_with_epsilon_1e_7() -> None:
    # AEVLP's BCE+DAMP: an undefined pseudo-label is a negative, ε = 1e-7
    eps = 1e-7
    cfg = create_loss_cfg("bce", "voc", {"undefined": "negative", "eps": eps})
    pseudo = [[-1, 1, 1, 0], [-1, 1, 0, 0]]
    out = run("bce", LOGITS, OBSERVED, pseudo, cfg=cfg)
    assert_cells(out, [[nlog(P[0][0], eps), nlog(P[0][1], eps), nlog(1 - P[0][2], eps), nlog(1 - P[0][3], eps)],
                       [nlog(1 - P[1][0], eps), nlog(1 - P[1][1], eps), nlog(P[1][2], eps),
                        nlog(1 - P[1][3], eps)]])
    # without pseudo-labels every unknown cell is undefined, so "negative" is AN (with its own ε)
    out = run("bce", LOGITS, OBSERVED, None, cfg=create_loss_cfg("bce", "voc", {"undefined": "negative"}))
    torch.testing.assert_close(out.cells, run("an", LOGITS, OBSERVED).cells, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [1e-5, 1e-7])
def test_bce_epsilon_caps_a_confidently_wrong_cell(eps: float) -> None:
    # p = sigmoid(-40) ≈ 4e-18: the term is -log(p + ε), not 40
    out = run("bce", [[-40.0, 40.0]], [[1, 0]], [[0, 0]], cfg=create_loss_cfg("bce", None, {"eps": eps,
                                                                                             "undefined": "negative"}))
    assert out.cells[0].tolist() == pytest.approx([-math.log(sig(-40.0) + eps), -math.log(1 - sig(40.0) + eps)],
                                                  rel=1e-9)
    assert out.cells[0, 0].item() == pytest.approx(-math.log(eps), rel=1e-9)


def test_bce_option_errors() -> None:
    with pytest.raises(InputError, match="undefined"):
        create_loss_cfg("bce", "voc", {"undefined": "positive"})
    for bad in (0, -1e-7, 1.0):
        with pytest.raises(InputError, match="eps"):
            create_loss_cfg("bce", "voc", {"eps": bad})


# --- partial-bce ----------------------------------------------------------------------------------------

def g(q: float, a: float = -4.45, b: float = 5.45, gamma: float = 1.0) -> float:
    return a * q ** gamma + b


def test_partial_bce_normalisation_constants() -> None:
    assert g(1.0) == pytest.approx(1.0, abs=1e-12)
    # docs/methods.md's rounded a, b give g(0.1) = 5.005 (the exact constants -40/9, 49/9 give 5)
    assert g(0.1) == pytest.approx(5.0, abs=0.01)
    cfg = create_loss_cfg("partial-bce", "cub", {})
    assert (cfg.a, cfg.b, cfg.gamma) == (-4.45, 5.45, 1.0)
    # the code's weight: ten classes, 10 / 1 / 0 observed cells → q = 1 / 0.1 / 0
    observed = torch.tensor([[1] * 5 + [-1] * 5, [0] * 9 + [-1], [0] * 10])
    weight = label_proportion_weight(observed, cfg, torch.float64)
    assert weight.shape == (3, 1)
    assert weight[:, 0].tolist() == pytest.approx([1.0, g(0.1), 0.0], rel=1e-12, abs=1e-12)
    assert weight[1, 0].item() == pytest.approx(5.0, abs=0.01)


def test_partial_bce_images_with_q_1_half_and_0() -> None:
    # C = 4. Image 0: all observed (q = 1, g = 1). Image 1: two observed (q = 0.5, g = 3.225).
    # Image 2: nothing observed (q = 0): contributes 0.
    logits = [[0.5, -1.0, 2.0, -3.0], [1.5, -0.2, 0.7, 4.0], [0.3, -0.3, 5.0, -5.0]]
    observed = [[1, -1, 1, -1], [0, 1, -1, 0], [0, 0, 0, 0]]
    p = [[sig(x) for x in row] for row in logits]
    g_half = g(0.5)
    assert g_half == pytest.approx(3.225, rel=1e-12)

    def log_p(x: float) -> float:  # exact log-sigmoid (no ε for this loss)
        return -math.log1p(math.exp(-x))

    def log_not_p(x: float) -> float:
        return -math.log1p(math.exp(x))

    out = run("partial-bce", logits, observed, pseudo=[[1] * 4] * 3)
    assert_cells(out, [
        [-log_p(0.5), -log_not_p(-1.0), -log_p(2.0), -log_not_p(-3.0)],
        [0.0, -g_half * log_p(-0.2), -g_half * log_not_p(0.7), 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ])
    # total is docs/methods.md's per-image loss -(g(q)/C)·Σ_c(...) averaged over the batch
    per_image = [
        -(1.0 / 4) * (math.log(p[0][0]) + math.log(1 - p[0][1]) + math.log(p[0][2]) + math.log(1 - p[0][3])),
        -(g_half / 4) * (math.log(p[1][1]) + math.log(1 - p[1][2])),
        0.0,
    ]
    assert out.total.item() == pytest.approx(sum(per_image) / 3, rel=1e-12)


def test_partial_bce_exact_log_and_gamma_option() -> None:
    # one observed positive of two classes: q = 0.5; gamma = 2 → g = a/4 + b; log p is exact at s = -40
    cfg = create_loss_cfg("partial-bce", "coco", {"gamma": 2, "a": -1.0, "b": 2.0})
    out = run("partial-bce", [[-40.0, 0.0]], [[1, 0]], cfg=cfg)
    weight = g(0.5, a=-1.0, b=2.0, gamma=2.0)
    assert weight == pytest.approx(1.75)
    assert_cells(out, [[weight * math.log1p(math.exp(40.0)), 0.0]])


def test_partial_bce_option_errors() -> None:
    with pytest.raises(InputError, match="gamma"):
        create_loss_cfg("partial-bce", "voc", {"gamma": 0})
    with pytest.raises(InputError, match="a \\+ b >= 0"):
        create_loss_cfg("partial-bce", "voc", {"a": -6.0})
    with pytest.raises(InputError, match="b >= 0"):
        create_loss_cfg("partial-bce", "voc", {"a": 1.0, "b": -0.5})


# --- the methods ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["an-ls", "wan", "epr"])
@pytest.mark.parametrize(("dataset", "batch_size"), [("voc2012", 8), ("coco", 16), ("nus", 16), ("cub", 8)])
def test_cole_family_presets(method: str, dataset: str, batch_size: int) -> None:
    cfg = resolve_train_cfg(method, "d", dataset, "o")
    assert (cfg.loss, cfg.pseudo, cfg.regime, cfg.needs_store, cfg.early_stop) == (method, "none", "spml", False,
                                                                                     "none")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.head_lr_mult) == (10, batch_size, 1e-5, 1.0)


@pytest.mark.parametrize("method", ["an-ls", "wan", "epr", "partial-bce", "bce-pl", "gpr"])
def test_presets_keep_the_digits_training_settings(method: str) -> None:
    cfg = resolve_train_cfg(method, "d", "digits", "o")
    assert (cfg.backbone, cfg.epochs, cfg.batch_size, cfg.lr, cfg.head_lr_mult) == ("small-cnn", 10, 32, 1e-3, 1.0)
    assert cfg.early_stop == "none"


def test_pseudo_label_presets() -> None:
    for method in ("bce-pl", "gpr"):
        for dataset, epochs, batch_size in (("voc2012", 8, 8), ("coco", 8, 16), ("nus", 10, 16), ("cub", 10, 8)):
            cfg = resolve_train_cfg(method, "d", dataset, "o")
            assert (cfg.pseudo, cfg.regime, cfg.needs_store, cfg.early_stop) == ("damp", "spml", True, "gr")
            assert (cfg.epochs, cfg.batch_size, cfg.head_lr_mult) == (epochs, batch_size, 10.0)
    bce_pl = resolve_train_cfg("bce-pl", "d", "coco", "o", overrides={"pseudo": "vlpl"})
    assert bce_pl.loss == "bce" and bce_pl.pseudo == "vlpl"
    assert create_loss_cfg("bce", "coco", bce_pl.loss_params) == create_loss_cfg(
        "bce", None, {"undefined": "negative", "eps": 1e-7})
    assert resolve_train_cfg("gpr", "d", "voc2012", "o").loss == "gpr"
    partial = resolve_train_cfg("partial-bce", "d", "coco", "o")
    assert (partial.loss, partial.regime, partial.needs_store) == ("partial-bce", "partial-0.5", False)
    assert resolve_train_cfg("partial-bce", "d", "coco", "o", overrides={"regime": "partial-0.3"}).regime == \
        "partial-0.3"


TINY = ["--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "3"]


@pytest.mark.parametrize(("method", "pseudo"), [("gpr", "vlpl"), ("bce-pl", "random")])
def test_pseudo_label_source_switch_trains(method: str, pseudo: str, digits_methods, methods_store, tmp_path) -> None:
    out = tmp_path / f"{method}-{pseudo}"
    assert run_cli(["train", "--dataset", digits_methods, "--method", method, "--pseudo", pseudo,
                    "--pseudo-store", methods_store, "--out", out, *TINY]) == 0
    summary = run_schema.validate(out)
    assert summary.method == method and summary.epochs_run >= 1 and 0 <= summary.test.map <= 100
    config = tomllib.loads((out / run_schema.CONFIG_TOML).read_text())
    assert config["pseudo"] == pseudo
    # the pseudo-labels were made and measured (the quality record exists only for a pseudo-labeller)
    train_records = [r for r in run_schema.read_metrics(out) if any(k.startswith("pseudo_") for k in r)]
    assert train_records
