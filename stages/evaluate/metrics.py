"""Multi-label evaluation metrics of docs/methods.md §2: mAP (scikit-learn's AP semantics) and threshold metrics.

All functions take `scores` [N, C] (probabilities; AP only ranks them) and `targets` [N, C] full labels in
{0, 1}, as numpy arrays or anything `numpy.asarray` accepts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _as_scores_and_targets(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores and bool targets, both [N, C]; `ValueError` on shapes, NaN scores or non-0/1 targets."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be [N, C], got {scores.shape} and {targets.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN values (a diverged model?)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be full labels in {0, 1}")
    return scores, targets == 1


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class average precision with scikit-learn's `average_precision_score` semantics.

    AP = Σ_n (R_n − R_{n−1})·P_n over the distinct score thresholds (tied scores form one threshold),
    non-interpolated. Equivalently, the mean over a class's positives of the precision at the end of the
    positive's tie group, which is what is computed here, for all classes at once. A class with no
    positive scores 0 (scikit-learn warns there and returns nan or 0, depending on its version).

    Returns:
        [C] float64 APs in [0, 1].
    """
    scores, targets = _as_scores_and_targets(scores, targets)
    num_rows, num_classes = scores.shape
    positives = targets.sum(axis=0)
    if num_rows == 0:
        return np.zeros(num_classes)
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    precision = np.cumsum(sorted_targets, axis=0, dtype=np.float64) / np.arange(1, num_rows + 1)[:, None]
    # Index of the last row of each row's tie group: mark group ends, then a reverse running minimum.
    is_group_end = np.ones((num_rows, num_classes), dtype=bool)
    is_group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    end_index = np.where(is_group_end, np.arange(num_rows)[:, None], num_rows - 1)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_group_end = np.take_along_axis(precision, end_index, axis=0)
    summed = np.where(sorted_targets, precision_at_group_end, 0.0).sum(axis=0)
    return np.where(positives > 0, summed / np.maximum(positives, 1), 0.0)


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """mAP in percent: 100 × the mean of `average_precision` over all C classes (no-positive classes count as 0)."""
    return 100.0 * float(np.mean(average_precision(scores, targets)))


def threshold_metrics(scores: ArrayLike, targets: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Overall and per-class precision/recall/F1, macro-F1 and Hamming loss at `threshold` (fractions).

    A cell is predicted positive where score >= threshold (the reference code's `logit >= 0`). Per class:
    Nc true positives, Np predicted positives, Ng ground-truth positives. As docs/methods.md §2 (and the reference
    code) has it, Np = 0 is replaced by 1 *before* anything is summed, so OP = ΣNc/ΣNp counts 1 for every
    class never predicted. Ng = 0 (a class absent from the split) is likewise replaced by 1 in CR's per-class
    Nc/Ng (that class contributes recall 0, as its AP contributes 0 to mAP); OR = ΣNc/ΣNg uses the true Ng
    (ΣNg = 0 gives OR = 0). F1s with P = R = 0 are 0. Per-class F1 = 2·Nc/(Np+Ng) (0 where Nc = 0).

    Returns:
        `op`, `or`, `of1`, `cp`, `cr`, `cf1`, `macro_f1`, `hamming`, each a fraction in [0, 1].
    """
    scores, targets = _as_scores_and_targets(scores, targets)
    predicted = scores >= threshold
    correct = (predicted & targets).sum(axis=0).astype(np.float64)
    num_predicted = predicted.sum(axis=0).astype(np.float64)
    num_true = targets.sum(axis=0).astype(np.float64)
    num_predicted_safe = np.where(num_predicted == 0, 1.0, num_predicted)
    num_true_safe = np.where(num_true == 0, 1.0, num_true)

    op = correct.sum() / num_predicted_safe.sum() if num_predicted_safe.size else 0.0
    overall_recall = correct.sum() / num_true.sum() if num_true.sum() > 0 else 0.0
    cp = float(np.mean(correct / num_predicted_safe)) if correct.size else 0.0
    cr = float(np.mean(correct / num_true_safe)) if correct.size else 0.0
    per_class_f1 = np.where(correct > 0, 2 * correct / np.maximum(num_predicted + num_true, 1), 0.0)
    return {
        "op": float(op),
        "or": float(overall_recall),
        "of1": _f1(float(op), float(overall_recall)),
        "cp": cp,
        "cr": cr,
        "cf1": _f1(cp, cr),
        "macro_f1": float(np.mean(per_class_f1)) if per_class_f1.size else 0.0,
        "hamming": float(np.mean(predicted != targets)) if predicted.size else 0.0,
    }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def evaluate_scores(scores: ArrayLike, targets: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """The metrics a run records per split (the `val`/`test` objects of `summary.json`).

    Returns:
        `map`, `cf1`, `of1`, `macro_f1`, `cp`, `cr`, `op`, `or` in percent (0–100); `hamming` as a
        fraction of wrong cells (0–1), as the literature reports it.
    """
    result = {"map": mean_average_precision(scores, targets)}
    thresholded = threshold_metrics(scores, targets, threshold)
    for key in ("cf1", "of1", "macro_f1", "hamming", "cp", "cr", "op", "or"):
        result[key] = thresholded[key] if key == "hamming" else 100.0 * thresholded[key]
    return result
