"""The `ll-cp` label state: LL-Cp's corrections become permanent observed positives (docs/methods.md §3.4).

Paper: Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification", CVPR 2022.

The reference code writes a corrected cell into the dataset's observed-label matrix, so the image's next
appearance (the next epoch) reads it as an observed positive, whose loss is BCE(s, 1) and which is never a
candidate again. Here one int8 flag per cell records the corrections; `observed_for` applies them to every
batch. (docs/methods.md notes that the original LL repository ran LL-Ct under the name LL-Cp; this is the rule the
paper describes.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mlpl.schemas.labels import Observed
from mlpl.stages.families import NO_FAMILY_VALUES
from mlpl.stages.train.labelstate import (
    LabelState,
    LabelStateContext,
    RowTable,
    register_label_state,
)
from mlpl.stages.train.losses import EpochState, LossOutput


@dataclass(frozen=True)
class LlCpStateCfg:
    """`ll-cp` has no parameters (Δ is the loss's)."""


class PermanentPositivesState(LabelState):
    """Cells that became observed positives for the rest of training: table `corrected` [N, C] int8, 1 where a
    cell was turned (LL-Cp's corrections, MIME's pseudo-positives).

    A flag only ever turns on, so ranks combine their epochs by maximum. `end_epoch` logs how many there are.
    """

    def __init__(self, ctx: LabelStateContext, cfg: object) -> None:
        super().__init__(ctx, cfg)
        self.tables["corrected"] = RowTable(np.zeros((ctx.num_rows, ctx.num_classes), dtype=np.int8),
                                            dtype=torch.int8, sync="max")

    def observed_for(self, rows: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """`observed` with the rows' turned cells set to +1 (only unknown cells are ever turned; an observed
        negative stays −1 whatever the table says)."""
        corrected = self.tables["corrected"][rows].to(observed.device) > 0
        return torch.where(corrected & (observed == Observed.UNKNOWN),
                           torch.full_like(observed, int(Observed.POSITIVE)), observed)

    def count(self) -> float:
        """How many cells are permanent positives so far."""
        return float(self.tables["corrected"].data.sum(dtype=torch.int64))


@register_label_state(
    name="ll-cp",
    description="LL-Cp: corrected labels become permanent observed positives",
    reference="Kim et al., CVPR 2022 (LL-Cp); docs/methods.md §3.4",
    cfg_cls=LlCpStateCfg,
    dataset_defaults=NO_FAMILY_VALUES,
)
class LlCpState(PermanentPositivesState):
    """Permanent positives of LL-Cp: each step's corrections (`out.aux["corrected"]`) are kept."""

    def after_step(self, *, rows: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, out: LossOutput,
                   epoch: EpochState) -> None:
        """Record the step's corrections (`out.aux["corrected"]`, [B, C] bool) for the batch's rows."""
        corrected = out.aux["corrected"].detach().to("cpu", torch.float32)
        table = self.tables["corrected"]
        table[rows] = torch.maximum(table[rows], corrected)

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        """Logs `corrected`: how many cells are permanent positives so far."""
        return {"corrected": self.count()}


