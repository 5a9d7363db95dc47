"""Golden-value tests of the pseudo-labellers (docs/methods.md §4.3, 4.4), their registry and the accumulated union."""

from __future__ import annotations

import math

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.accumulate import AccumulatedPseudoLabels
from mlpl.stages.families import HYPERPARAMETER_FAMILIES as HYPERPARAMETER_DATASETS
from mlpl.stages.train.losses import EpochState
from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS, create_pseudo_cfg, get_pseudolabeller_info
from mlpl.stages.train.pseudolabels.damp import damp, damp_scores

TAU = 0.01


def sims_from_softmax(views: list[list[float]]) -> torch.Tensor:
    """[1, V, C] cosines whose softmax(cos/τ) per view is exactly the given probability rows (to rounding)."""
    return torch.tensor([[[TAU * math.log(q) for q in view] for view in views]], dtype=torch.float64)


def damp_cfg(**overrides: object):
    base = {"tau": TAU, "nu": 0.3, "zeta_global": 0.3, "top_k": 3, "delta_neg": 0.4}
    return create_pseudo_cfg("damp", None, {**base, **overrides})


def labels_of(sims: torch.Tensor, observed: list[int], cfg) -> list[int]:
    out = damp(sims=sims, observed=torch.tensor([observed]), cfg=cfg)
    assert out.dtype == torch.int8 and out.shape == (1, len(observed))
    return out[0].tolist()


# Image A: observed positive class 0; global view and four tiles (2×2), C = 5.
VIEWS_A = [
    [0.40, 0.30, 0.15, 0.10, 0.05],  # S_g
    [0.50, 0.10, 0.20, 0.15, 0.05],
    [0.20, 0.55, 0.10, 0.05, 0.10],
    [0.30, 0.10, 0.35, 0.15, 0.10],
    [0.25, 0.25, 0.25, 0.20, 0.05],
]
# By hand: ω = max over tiles = [.50, .55, .35, .20, .10], ψ = min = [.20, .10, .10, .05, .05],
# tile mean = [.3125, .25, .225, .1375, .075], S_avg = (S_g + mean)/2 = [.35625, .275, .1875, .11875, .0625].
OBS_A = [1, 0, 0, 0, 0]


def test_damp_intermediate_scores_image_a() -> None:
    # ν = 0.3 < S_g[ĉ] = 0.4, so ζ_local = 0.3; ω > 0.3 for classes 0-2 → S_agg = [.5, .55, .35, .05, .05].
    s = damp_scores(sims_from_softmax(VIEWS_A), torch.tensor([OBS_A]), damp_cfg())
    close = dict(rel=1e-9, abs=1e-12)
    assert s.s_global[0].tolist() == pytest.approx(VIEWS_A[0], **close)
    assert s.omega[0].tolist() == pytest.approx([0.50, 0.55, 0.35, 0.20, 0.10], **close)
    assert s.psi[0].tolist() == pytest.approx([0.20, 0.10, 0.10, 0.05, 0.05], **close)
    assert s.zeta_local.tolist() == pytest.approx([0.3], **close)
    assert s.s_agg[0].tolist() == pytest.approx([0.50, 0.55, 0.35, 0.05, 0.05], **close)
    assert s.s_final[0].tolist() == pytest.approx([0.45, 0.425, 0.25, 0.075, 0.05], **close)
    assert s.s_avg[0].tolist() == pytest.approx([0.35625, 0.275, 0.1875, 0.11875, 0.0625], **close)


@pytest.mark.parametrize(("overrides", "expected"), [
    # top-3 of S_final = classes 0, 1, 2; ζ_global 0.3 keeps 0 (.45) and 1 (.425), drops 2 (.25);
    # int(0.4·5) = 2 negatives: the lowest S_avg, classes 4 and 3.
    ({}, [1, 1, 0, -1, -1]),
    ({"zeta_global": 0.2}, [1, 1, 1, -1, -1]),  # class 2 (.25) now passes
    # ν = 0.5 > S_g[ĉ]: ζ_local = S_g[ĉ] = 0.4, ω_2 = .35 no longer exceeds it → S_agg_2 = ψ_2 = .10,
    # S_final_2 = (.15 + .10)/2 = .125 < 0.2.
    ({"zeta_global": 0.2, "nu": 0.5}, [1, 1, 0, -1, -1]),
    # top-1: the observed positive takes the only slot (it is part of the ranking).
    ({"top_k": 1}, [1, 0, 0, -1, -1]),
    ({"delta_neg": 0.2}, [1, 1, 0, 0, -1]),  # int(0.2·5) = 1 negative
    ({"delta_neg": 0.0}, [1, 1, 0, 0, 0]),
    ({"negative_value": 0}, [1, 1, 0, 0, 0]),  # the released code writes 0 instead of -1
])
def test_damp_image_a(overrides: dict, expected: list[int]) -> None:
    assert labels_of(sims_from_softmax(VIEWS_A), OBS_A, damp_cfg(**overrides)) == expected


def test_damp_several_observed_positives_use_the_largest_global_score() -> None:
    # Observed classes 0 (S_g .40) and 2 (S_g .15), ν = 0.5: ζ_local = min(max(.40, .15), .5) = 0.4.
    s = damp_scores(sims_from_softmax(VIEWS_A), torch.tensor([[1, 0, 1, 0, 0]]), damp_cfg(nu=0.5))
    assert s.zeta_local.tolist() == pytest.approx([0.4], rel=1e-9)


# Image B: no observed positive, so ζ_local = ν = 0.2. Tile 1 is uniform: softmax is exactly 1/5 = 0.2,
# so ω_0 = ω_4 = 0.2 = ζ_local exactly and the ">" / ">=" switch decides.
VIEWS_B = [
    [0.45, 0.30, 0.10, 0.10, 0.05],  # S_g
    [0.20, 0.20, 0.20, 0.20, 0.20],
    [0.05, 0.60, 0.15, 0.10, 0.10],
    [0.10, 0.30, 0.40, 0.15, 0.05],
    [0.15, 0.20, 0.05, 0.50, 0.10],
]
# ω = [.2, .6, .4, .5, .2], ψ = [.05, .2, .05, .1, .05], tile mean = [.125, .325, .2, .2375, .1125],
# S_avg = [.2875, .3125, .15, .16875, .08125] → the 2 lowest: classes 4, 2.
# ">":  S_agg = [.05, .6, .4, .5, .05] → S_final = [.25, .45, .25, .30, .05]  → top-2: 1, 3
# ">=": S_agg = [.2, .6, .4, .5, .2]   → S_final = [.325, .45, .25, .30, .125] → top-2: 1, 0
OBS_B = [0, 0, 0, 0, -1]


def test_damp_compare_switch_no_observed_positive() -> None:
    sims = sims_from_softmax(VIEWS_B)
    common = {"nu": 0.2, "zeta_global": 0.28, "top_k": 2, "delta_neg": 0.4}
    s = damp_scores(sims, torch.tensor([OBS_B]), damp_cfg(**common))
    assert s.zeta_local.item() == 0.2
    assert s.omega[0, 0].item() == 0.2 and s.omega[0, 4].item() == 0.2  # the premise: exact equality
    assert labels_of(sims, OBS_B, damp_cfg(**common)) == [0, 1, -1, 1, -1]  # code's ">" (default)
    assert labels_of(sims, OBS_B, damp_cfg(**common, compare=">=")) == [1, 1, -1, 0, -1]  # paper's ">="
    assert labels_of(sims, OBS_B, damp_cfg(**common, negative_value=0)) == [0, 1, 0, 1, 0]


def test_damp_negative_overrides_positive() -> None:
    # C = 2, one tile, ν = 0: S_final = S_avg = [.65, .35]; both are top-2 positives, then int(0.5·2) = 1
    # negative (class 1) is written last.
    sims = sims_from_softmax([[0.6, 0.4], [0.7, 0.3]])
    cfg = {"nu": 0.0, "zeta_global": 0.0, "top_k": 2, "delta_neg": 0.5}
    assert labels_of(sims, [0, 0], damp_cfg(**cfg)) == [1, -1]
    assert labels_of(sims, [0, 0], damp_cfg(**cfg, negative_value=0)) == [1, 0]


def test_damp_batch_rows_are_independent_and_nan_rows_undefined() -> None:
    cfg = damp_cfg()
    a = sims_from_softmax(VIEWS_A)
    nan_row = a.clone()
    nan_row[0, 3, 2] = float("nan")
    sims = torch.cat([a, nan_row, a]).half()  # the store's float16 is computed in float32
    out = damp(sims=sims, observed=torch.tensor([OBS_A, OBS_A, OBS_A]), cfg=cfg)
    assert out.tolist() == [[1, 1, 0, -1, -1], [0, 0, 0, 0, 0], [1, 1, 0, -1, -1]]


def test_damp_needs_tiles() -> None:
    with pytest.raises(ValueError, match="V>=2"):
        damp(sims=torch.zeros(1, 1, 3), observed=torch.zeros(1, 3, dtype=torch.long), cfg=damp_cfg())


@pytest.mark.parametrize(("dataset", "expected"), [
    ("voc", (0.01, 0.0, 0.5, 3, 0.2)),
    ("coco", (0.01, 0.3, 0.5, 3, 0.3)),
    ("nus", (0.01, 0.3, 0.6, 3, 0.2)),
    ("cub", (0.1, 0.005, 0.005, 32, 0.2)),
    ("digits", (0.05, 0.3, 0.3, 3, 0.3)),
])
def test_damp_dataset_defaults(dataset: str, expected: tuple) -> None:
    cfg = create_pseudo_cfg("damp", dataset, {})
    assert (cfg.tau, cfg.nu, cfg.zeta_global, cfg.top_k, cfg.delta_neg) == expected
    assert (cfg.negative_value, cfg.compare) == (-1, ">")


def test_damp_cfg_errors() -> None:
    with pytest.raises(InputError, match="compare"):
        create_pseudo_cfg("damp", "voc", {"compare": "=>"})
    with pytest.raises(InputError, match="negative_value"):
        create_pseudo_cfg("damp", "voc", {"negative_value": 1})
    with pytest.raises(InputError, match="top_k"):
        create_pseudo_cfg("damp", "voc", {"top_k": 2.5})
    with pytest.raises(InputError, match="zeta"):
        create_pseudo_cfg("damp", "voc", {"zeta": 0.5})
    with pytest.raises(InputError, match="did you mean 'damp'"):
        get_pseudolabeller_info("dam")


# --- VLPL, random, none ---------------------------------------------------------------------------------

def test_vlpl_threshold_on_raw_cosines() -> None:
    # Global cosines [0.30, 0.29, 0.20, 0.31] / 0.01 → softmax ∝ [e^-1, e^-2, e^-11, 1] ≈ [.2447, .0900, 0, .6652].
    weights = [math.exp(-1), math.exp(-2), math.exp(-11), 1.0]
    softmax = [w / sum(weights) for w in weights]
    assert softmax[3] == pytest.approx(0.6652, abs=1e-4) and softmax[0] == pytest.approx(0.2447, abs=1e-4)
    sims = torch.tensor([[[0.30, 0.29, 0.20, 0.31], [0.9, 0.9, 0.9, -0.9]]])  # the tile is ignored
    fn = get_pseudolabeller_info("vlpl").fn
    observed = torch.tensor([[0, 1, 0, 0]])
    assert fn(sims=sims, observed=observed, cfg=create_pseudo_cfg("vlpl", "coco", {})).tolist() == [[0, 0, 0, 1]]
    low = create_pseudo_cfg("vlpl", "coco", {"threshold": 0.2})
    assert fn(sims=sims, observed=observed, cfg=low).tolist() == [[1, 0, 0, 1]]


def test_vlpl_threshold_values() -> None:
    # softmax(cos/τ) = [.45, .35, .20]: classes 0 and 1 exceed 0.3; no negatives.
    sims = sims_from_softmax([[0.45, 0.35, 0.20]])
    out = get_pseudolabeller_info("vlpl").fn(sims=sims, observed=torch.tensor([[1, 0, 0]]),
                                             cfg=create_pseudo_cfg("vlpl", None, {}))
    assert out.tolist() == [[1, 1, 0]]
    high = create_pseudo_cfg("vlpl", None, {"threshold": 0.4})
    assert get_pseudolabeller_info("vlpl").fn(sims=sims, observed=torch.tensor([[1, 0, 0]]), cfg=high).tolist() \
        == [[1, 0, 0]]


def test_random_positives_expected_count_and_determinism() -> None:
    rows, classes = 2000, 10
    observed = torch.zeros(rows, classes, dtype=torch.long)
    observed[torch.arange(rows), torch.arange(rows) % classes] = 1
    sims = torch.zeros(rows, 1, classes)
    cfg = create_pseudo_cfg("random", "coco", {})  # m = 2.9 → 1.9 positives per image on average
    fn = get_pseudolabeller_info("random").fn
    out = fn(sims=sims, observed=observed, cfg=cfg, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.int8
    assert not (out[observed == 1] != 0).any()  # only unknown cells
    assert set(out.unique().tolist()) <= {0, 1}
    # 9 unknown cells, p = 1.9/9: the mean count has standard error sqrt(9·p(1-p)/2000) ≈ 0.027.
    assert abs(out.float().sum(dim=1).mean().item() - 1.9) < 0.15
    again = fn(sims=sims, observed=observed, cfg=cfg, generator=torch.Generator().manual_seed(0))
    other = fn(sims=sims, observed=observed, cfg=cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_random_positives_probability_is_capped() -> None:
    # CUB's m = 31.4 with a single unknown cell: probability min(1, 30.4/1) = 1; no unknown cell → nothing.
    observed = torch.tensor([[1, -1, 0], [1, -1, -1]])
    out = get_pseudolabeller_info("random").fn(sims=torch.zeros(2, 1, 3), observed=observed,
                                               cfg=create_pseudo_cfg("random", "cub", {}),
                                               generator=torch.Generator().manual_seed(3))
    assert out.tolist() == [[0, 0, 1], [0, 0, 0]]


def test_none_gives_all_undefined() -> None:
    out = get_pseudolabeller_info("none").fn(sims=torch.randn(2, 5, 4), observed=torch.zeros(2, 4),
                                             cfg=create_pseudo_cfg("none", "voc", {}))
    assert out.dtype == torch.int8 and not out.any()


# --- every registered pseudo-labeller -------------------------------------------------------------------

@pytest.mark.parametrize("name", PSEUDOLABELLERS.names())
@pytest.mark.parametrize("dataset", HYPERPARAMETER_DATASETS)
def test_registered_pseudolabeller_contract(name: str, dataset: str) -> None:
    info = get_pseudolabeller_info(name)
    assert info.name == name and info.description and info.reference
    assert set(info.dataset_defaults) == set(HYPERPARAMETER_DATASETS)
    cfg = create_pseudo_cfg(name, dataset, {})
    gen = torch.Generator().manual_seed(7)
    sims = (0.25 + 0.05 * torch.randn(4, 5, 6, generator=gen)).half()
    sims[2, 1, 3] = float("nan")
    observed = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, -1, 1, 0, 0]])
    # labellers that read the network get the batch's logits and the epoch
    extra = {"logits": torch.randn(4, 6, generator=gen), "epoch": EpochState(3, 10)} if info.needs_logits else {}
    out = info.fn(sims=sims, observed=observed, cfg=cfg, generator=torch.Generator().manual_seed(1), **extra)
    assert out.shape == (4, 6) and out.dtype == torch.int8 and out.device == sims.device
    assert set(out.unique().tolist()) <= {-1, 0, 1}
    if info.uses_sims:
        assert not out[2].any()  # the row with NaN is undefined
    again = info.fn(sims=sims, observed=observed, cfg=cfg, generator=torch.Generator().manual_seed(1), **extra)
    assert torch.equal(out, again)


# --- accumulated union ----------------------------------------------------------------------------------

def test_accumulated_pseudo_labels_union_and_state() -> None:
    acc = AccumulatedPseudoLabels(num_rows=4, num_classes=3)
    assert acc.seen.dtype == torch.uint8
    acc.update(torch.tensor([2, 0]), torch.tensor([[1, 0, -1], [0, 1, 0]], dtype=torch.int8))
    acc.update([2, 2], torch.tensor([[0, 1, 0], [0, 0, 1]]))  # a repeated row: both copies count
    assert acc.get([0, 1, 2]).tolist() == [[0, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert acc.get([0]).dtype == torch.int8
    restored = AccumulatedPseudoLabels(4, 3)
    restored.load_state_dict(acc.state_dict())
    assert torch.equal(restored.get([0, 1, 2, 3]), acc.get([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="cannot be loaded"):
        AccumulatedPseudoLabels(5, 3).load_state_dict(acc.state_dict())
    with pytest.raises(IndexError):
        acc.get([4])
    negatives = AccumulatedPseudoLabels(4, 3, value=-1)
    negatives.update([1], torch.tensor([[1, -1, 0]]))
    assert negatives.get([1]).tolist() == [[0, -1, 0]]
    acc.reset()
    assert not acc.get([0, 1, 2, 3]).any()
