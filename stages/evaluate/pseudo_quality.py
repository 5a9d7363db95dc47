"""Pseudo-label quality of docs/methods.md §2: per-epoch and accumulated precision/recall of pseudo-labels.

Counted over training cells that are not the observed positive (an observed positive is a free true
positive and would inflate precision). Positives: precision = correct / predicted, recall = correct /
true positives. Negatives the same way against the true negatives (precision = the fraction of negative
pseudo-labels that are truly negative). "Accumulated" counts a cell as predicted if any epoch so far
predicted it (AEVLP Table 3). Values are percentages as the paper reports them; 0 where a denominator is 0
(as the released code does).

Feed it batch by batch, call `compute()` at the end of the epoch, then `reset()`: the per-epoch counts are
cleared, the accumulated unions are kept (and saved with `state_dict`). Each row should be fed once per
epoch; a repeated row is counted again. Under torchrun, `synchronise()` after each epoch sums the counts over
ranks and combines the unions (a cell predicted on any rank is predicted), so every value equals one process's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.accumulate import AccumulatedPseudoLabels

COUNT_NAMES: tuple[str, ...] = (
    "pos_predicted", "pos_correct", "pos_true", "acc_pos_predicted", "acc_pos_correct",
    "neg_predicted", "neg_correct", "neg_true", "acc_neg_predicted", "acc_neg_correct",
)
"""The order of `PseudoLabelQuality.counts`."""
QUALITY_NAMES: tuple[str, ...] = (
    "precision", "recall", "acc_precision", "acc_recall",
    "neg_precision", "neg_recall", "acc_neg_precision", "acc_neg_recall",
)
"""The keys of `PseudoLabelQuality.compute()`."""


class PseudoLabelQuality:
    """Accumulator of pseudo-label quality over one epoch, with unions across epochs.

    Args:
        num_rows: size of the training row space (`row` values must be below it).
        num_classes: C.
    """

    def __init__(self, num_rows: int, num_classes: int) -> None:
        self.positives = AccumulatedPseudoLabels(num_rows, num_classes, Pseudo.POSITIVE)
        self.negatives = AccumulatedPseudoLabels(num_rows, num_classes, Pseudo.NEGATIVE)
        self.counts = torch.zeros(len(COUNT_NAMES), dtype=torch.int64)

    def update(
        self,
        rows: torch.Tensor | np.ndarray,
        pseudo: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        observed: torch.Tensor | np.ndarray,
    ) -> None:
        """Add one batch (tensors on any device, or numpy arrays).

        Args:
            rows: [B] dataset rows.
            pseudo: [B, C] `Pseudo` values (the labeller's output, observed cells included).
            labels: [B, C] full labels (nonzero = positive).
            observed: [B, C] `Observed` values.
        """
        pseudo, labels, observed = (torch.as_tensor(x).detach().cpu() for x in (pseudo, labels, observed))
        if not pseudo.shape == labels.shape == observed.shape:
            raise ValueError(f"pseudo {tuple(pseudo.shape)}, labels {tuple(labels.shape)} and observed "
                             f"{tuple(observed.shape)} must have the same [B, C] shape")
        self.positives.update(rows, pseudo)
        self.negatives.update(rows, pseudo)
        counted = observed != Observed.POSITIVE
        true_pos = (labels != 0) & counted
        true_neg = (labels == 0) & counted
        pred_pos = (pseudo == Pseudo.POSITIVE) & counted
        pred_neg = (pseudo == Pseudo.NEGATIVE) & counted
        acc_pos = (self.positives.get(rows) == Pseudo.POSITIVE) & counted
        acc_neg = (self.negatives.get(rows) == Pseudo.NEGATIVE) & counted
        batch = [pred_pos, pred_pos & true_pos, true_pos, acc_pos, acc_pos & true_pos,
                 pred_neg, pred_neg & true_neg, true_neg, acc_neg, acc_neg & true_neg]
        self.counts += torch.stack([mask.sum() for mask in batch])

    def compute(self) -> dict[str, float]:
        """Percentages for the epoch so far.

        Returns:
            `precision`, `recall`, `acc_precision`, `acc_recall` of positive pseudo-labels and
            `neg_precision`, `neg_recall`, `acc_neg_precision`, `acc_neg_recall` of negative ones.
        """
        n = dict(zip(COUNT_NAMES, self.counts.tolist()))

        def percent(part: int, whole: int) -> float:
            return 100.0 * part / whole if whole > 0 else 0.0

        return {
            "precision": percent(n["pos_correct"], n["pos_predicted"]),
            "recall": percent(n["pos_correct"], n["pos_true"]),
            "acc_precision": percent(n["acc_pos_correct"], n["acc_pos_predicted"]),
            "acc_recall": percent(n["acc_pos_correct"], n["pos_true"]),
            "neg_precision": percent(n["neg_correct"], n["neg_predicted"]),
            "neg_recall": percent(n["neg_correct"], n["neg_true"]),
            "acc_neg_precision": percent(n["acc_neg_correct"], n["acc_neg_predicted"]),
            "acc_neg_recall": percent(n["acc_neg_correct"], n["neg_true"]),
        }

    def synchronise(self) -> None:
        """Under torchrun, after an epoch: every rank gets the counts summed over ranks and the unions combined
        (a no-op in one process). Call it on every rank before `compute()`."""
        from mlpl.stages.collectives import sum_over_ranks

        self.counts.copy_(sum_over_ranks(self.counts))
        self.positives.synchronise()
        self.negatives.synchronise()

    def reset(self) -> None:
        """Start a new epoch: clear the counts, keep the accumulated unions."""
        self.counts.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"positives": self.positives.state_dict(), "negatives": self.negatives.state_dict(),
                "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positives.load_state_dict(state["positives"])
        self.negatives.load_state_dict(state["negatives"])
        self.counts.copy_(torch.as_tensor(state["counts"], dtype=torch.int64))
