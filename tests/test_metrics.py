"""Tests of the evaluation metrics (docs/methods.md §2) against scikit-learn and hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from mlpl.stages.evaluate.metrics import (
    average_precision,
    evaluate_scores,
    mean_average_precision,
    threshold_metrics,
)
from mlpl.stages.evaluate.pseudo_quality import PseudoLabelQuality
from sklearn.metrics import average_precision_score


def test_average_precision_hand_example_with_ties() -> None:
    # Scores .9 (pos), .8 (neg), .8 (pos), .1 (neg): thresholds .9 → P 1, R .5; .8 (tie group) → P 2/3, R 1.
    # AP = .5·1 + .5·2/3 = 5/6. A second class has its positive tied with everything: AP = P at the end = 1/4.
    scores = np.array([[0.9, 0.3], [0.8, 0.3], [0.8, 0.3], [0.1, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    assert average_precision(scores, targets).tolist() == pytest.approx([5 / 6, 1 / 4], rel=1e-12)


@pytest.mark.parametrize(("seed", "rows"), [(0, 60), (1, 60), (2, 60), (3, 61), (4, 7), (5, 3000)])
def test_average_precision_matches_sklearn(seed: int, rows: int) -> None:
    rng = np.random.default_rng(seed)
    classes = 7
    scores = np.round(rng.random((rows, classes)), 1)  # one decimal: many ties
    scores[:, 1] = rng.random(rows)  # a column without ties
    scores[:, 2] = 0.5  # every score tied
    targets = (rng.random((rows, classes)) < 0.3).astype(np.int64)
    targets[0, :] = 1  # every class but the last has a positive
    targets[:, 3] = 1  # a class with only positives
    targets[:, -1] = 0  # a class with no positive
    ours = average_precision(scores, targets)
    for c in range(classes - 1):
        assert ours[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns on the class with no positive
        reference = average_precision_score(targets[:, -1], scores[:, -1])
    assert ours[-1] == 0.0 and (reference == 0.0 or np.isnan(reference))  # nan or 0 by sklearn version
    assert mean_average_precision(scores, targets) == pytest.approx(100 * ours.sum() / classes, rel=1e-12)


def test_average_precision_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([[np.nan]]), np.array([[1]]))
    with pytest.raises(ValueError, match="0, 1"):
        average_precision(np.array([[0.5]]), np.array([[-1]]))
    with pytest.raises(ValueError, match="shape|\\[N, C\\]"):
        average_precision(np.zeros((2, 3)), np.zeros((3, 2)))


# 4 images × 3 classes; predicted (score >= 0.5) marked *.
SCORES = np.array([
    [0.9, 0.2, 0.45],  # *   .   .
    [0.7, 0.6, 0.1],   # *   *   .
    [0.4, 0.8, 0.3],   # .   *   .
    [0.5, 0.1, 0.2],   # *   .   .   (0.5 counts as predicted)
])
TARGETS = np.array([
    [1, 0, 0],
    [1, 1, 0],
    [0, 1, 0],
    [0, 0, 1],
])
# Class 0: Nc 2, Np 3, Ng 2. Class 1: Nc 2, Np 2, Ng 2. Class 2: Nc 0, Np 0 → 1, Ng 1.


def test_threshold_metrics_hand_example() -> None:
    m = threshold_metrics(SCORES, TARGETS)
    expected = {
        "op": 4 / 6,  # ΣNc / ΣNp with class 2's Np = 0 replaced by 1 (4/5 without the replacement)
        "or": 4 / 5,
        "of1": 8 / 11,  # 2·(2/3)(4/5) / (2/3 + 4/5)
        "cp": (2 / 3 + 1 + 0) / 3,
        "cr": (1 + 1 + 0) / 3,
        "cf1": 20 / 33,  # 2·(5/9)(2/3) / (5/9 + 2/3)
        "macro_f1": (2 * 2 / 5 + 2 * 2 / 4 + 0) / 3,  # per-class F1 = 2Nc/(Np + Ng)
        "hamming": 2 / 12,  # (row 3, class 0) and (row 3, class 2)
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key


def test_threshold_metrics_class_without_positives_and_threshold() -> None:
    # Class 1 has Ng = 0: its recall Nc/Ng uses Ng → 1 (recall 0). Threshold 0.75: only (0, 0) predicted.
    scores = np.array([[0.8, 0.7], [0.6, 0.2]])
    targets = np.array([[1, 0], [1, 0]])
    m = threshold_metrics(scores, targets, threshold=0.75)
    assert m["op"] == pytest.approx(1 / 2)  # ΣNc = 1, ΣNp = 1 + (0 → 1)
    assert m["or"] == pytest.approx(1 / 2)  # ΣNg = 2
    assert m["cp"] == pytest.approx((1 + 0) / 2)
    assert m["cr"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["macro_f1"] == pytest.approx((2 * 1 / 3 + 0) / 2)
    assert m["hamming"] == pytest.approx(1 / 4)
    empty = threshold_metrics(np.zeros((2, 2)), np.zeros((2, 2), dtype=int))
    assert empty["or"] == 0.0 and empty["of1"] == 0.0 and empty["cf1"] == 0.0


def test_evaluate_scores_units() -> None:
    result = evaluate_scores(SCORES, TARGETS)
    assert set(result) == {"map", "cf1", "of1", "macro_f1", "hamming", "cp", "cr", "op", "or"}
    m = threshold_metrics(SCORES, TARGETS)
    assert result["map"] == pytest.approx(mean_average_precision(SCORES, TARGETS))
    assert result["cf1"] == pytest.approx(100 * m["cf1"]) and result["or"] == pytest.approx(100 * m["or"])
    assert result["hamming"] == pytest.approx(m["hamming"])  # a fraction, not percent
    # mAP by hand: class 0 ranks .9+, .7+, .5-, .4- → AP 1; class 1 .8+, .6+ → 1; class 2 positive at .2 is
    # 3rd of 4 → AP 1/3.
    assert result["map"] == pytest.approx(100 * (1 + 1 + 1 / 3) / 3, rel=1e-12)


# --- pseudo-label quality -------------------------------------------------------------------------------

LABELS = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]])
OBSERVED = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
# Counted cells (not the observed positive): 3 true positives (r0c1, r1c2, r2c0), 6 true negatives.


def test_pseudo_quality_per_epoch_and_accumulated() -> None:
    quality = PseudoLabelQuality(num_rows=3, num_classes=4)
    epoch1 = torch.tensor([[1, 1, -1, 0], [0, 1, 1, -1], [0, 1, 0, -1]], dtype=torch.int8)
    quality.update(torch.arange(3), epoch1, LABELS, OBSERVED)
    # Positives (observed cells skipped): r0c1 ✓, r1c2 ✓, r2c1 ✗ → 2/3 precision, 2/3 recall.
    # Negatives: r0c2 ✓, r1c3 ✓ (r2c3 is the observed positive) → 2/2 precision, 2/6 recall.
    first = quality.compute()
    assert first == pytest.approx({
        "precision": 200 / 3, "recall": 200 / 3, "acc_precision": 200 / 3, "acc_recall": 200 / 3,
        "neg_precision": 100.0, "neg_recall": 100 / 3, "acc_neg_precision": 100.0, "acc_neg_recall": 100 / 3,
    })
    quality.reset()
    saved = quality.state_dict()
    resumed = PseudoLabelQuality(num_rows=3, num_classes=4)
    resumed.load_state_dict(saved)
    epoch2 = torch.tensor([[0, 0, 0, 1], [1, 0, 1, 0], [1, -1, -1, 0]], dtype=torch.int8)
    for q in (quality, resumed):
        # Fed in two batches, rows out of order.
        q.update(torch.tensor([2, 0]), epoch2[[2, 0]], LABELS[[2, 0]], OBSERVED[[2, 0]])
        q.update(np.array([1]), epoch2[[1]].numpy(), LABELS[[1]].numpy(), OBSERVED[[1]].numpy())  # numpy too
    # Epoch 2 positives: r0c3 ✗, r1c0 ✗, r1c2 ✓, r2c0 ✓ → 2/4, recall 2/3. Negatives r2c1 ✓, r2c2 ✓.
    # Union of positives: r0{c1, c3}, r1{c0, c2}, r2{c0, c1} → 6 predicted, 3 correct, recall 3/3.
    # Union of negatives: r0c2, r1c3, r2c1, r2c2 (r2c3 observed) → 4/4, recall 4/6.
    expected = {
        "precision": 50.0, "recall": 200 / 3, "acc_precision": 50.0, "acc_recall": 100.0,
        "neg_precision": 100.0, "neg_recall": 100 / 3, "acc_neg_precision": 100.0, "acc_neg_recall": 200 / 3,
    }
    assert quality.compute() == pytest.approx(expected)
    assert resumed.compute() == pytest.approx(expected)


def test_pseudo_quality_empty_is_zero() -> None:
    quality = PseudoLabelQuality(num_rows=2, num_classes=2)
    quality.update([0, 1], torch.zeros(2, 2, dtype=torch.int8), torch.tensor([[1, 0], [0, 1]]),
                   torch.tensor([[1, 0], [0, 1]]))
    assert set(quality.compute().values()) == {0.0}
