"""Label state `mime`: MIME's permanent pseudo-positives (docs/methods.md §3.9).

Paper: Liu, Xu, Lv, Geng, "Revisiting Pseudo-Label for Single-Positive Multi-Label Learning", ICML 2023.
Reference code: github.com/palm-biaoliu/mime, `train_mime.py: set_pseudo_labeling` (commit
9000abf1eb10ad5bda4d794b4cf8ee1e35ca4b7e).

After the training phase of every epoch t ≥ `warmup` (1-based; the reference's `P['epoch'] >= warmup_epoch`,
2, CUB 5), the network predicts every training image in evaluation mode and each unknown cell with
σ(s) > θ (strictly; θ = 0.95) becomes an observed positive for the rest of training: the reference adds the
0/1 mask to its observed-label matrix and clips at 1, so such a cell is never turned back. Here the flags are
the `corrected` table of `PermanentPositivesState` (saved and resumed with the run, combined across ranks by
maximum), applied to every batch by `observed_for`.

Differences from the reference:
- Its pseudo-labelling pass iterates the training loader, so it sees training augmentation, and with
  `drop_last=True` skips the last incomplete batch's images; here every training image is predicted once with
  the evaluation transform (the loop's `predict`).
- Only unknown cells are turned: the reference adds the mask to observed negatives too (−1 + 1 = 0, an observed
  negative becoming unknown), which single-positive data never has but partial-label regimes do.
- The pass after the last epoch is skipped: its labels would never be trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.train.labelstate import register_label_state
from mlpl.stages.train.labelstate.large_loss import PermanentPositivesState
from mlpl.stages.train.losses import EpochState


@dataclass(frozen=True, kw_only=True)
class MimeStateCfg:
    """Parameters of MIME's pseudo-positives (the reference's names in brackets).

    Attributes:
        threshold: θ in (0, 1): a prediction above it turns an unknown cell positive [theta].
        warmup: the first epoch (1-based, >= 1) after whose training phase cells are turned [warmup_epoch].
    """

    threshold: float = 0.95
    warmup: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.warmup < 1:
            raise InputError(f"warmup must be >= 1 (a 1-based epoch), got {self.warmup}")


def pseudo_positives(probs: np.ndarray, observed: np.ndarray, threshold: float) -> np.ndarray:
    """[n, C] bool: unknown cells (`observed == 0`) whose probability is above `threshold`."""
    return (np.asarray(observed) == Observed.UNKNOWN) & (np.asarray(probs) > threshold)


@register_label_state(
    name="mime",
    description="MIME: after the warm-up, unknown labels predicted above 0.95 become permanent positives",
    reference="Liu et al., ICML 2023 (MIME); docs/methods.md §3.9",
    cfg_cls=MimeStateCfg,
    # train_mime.py: θ = 0.95 everywhere, warm-up epoch 2 (CUB 5); digits keeps the common values
    dataset_defaults={"voc": {"threshold": 0.95, "warmup": 2}, "coco": {"threshold": 0.95, "warmup": 2},
                      "nus": {"threshold": 0.95, "warmup": 2}, "cub": {"threshold": 0.95, "warmup": 5},
                      "digits": {"threshold": 0.95, "warmup": 2}},
)
class MimeState(PermanentPositivesState):
    """MIME's pseudo-positives, added after each epoch from the warm-up on."""

    def wants_train_predictions(self, epoch: EpochState) -> bool:
        return self.cfg.warmup <= epoch.epoch < epoch.num_epochs

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        """Turn the confident unknown cells of `rows` (local rows, with `probs` [n, C]); logs `positives`, the
        number of pseudo-positive cells so far."""
        if rows is not None and probs is not None:
            turned = pseudo_positives(probs, self.ctx.observed[rows], self.cfg.threshold)
            table = self.tables["corrected"]
            table[rows] = torch.maximum(table[rows], torch.as_tensor(turned, dtype=torch.float32))
        return {"positives": self.count()}


