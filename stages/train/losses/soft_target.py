"""`soft-bce`: BCE on observed labels plus a weighted soft-target BCE toward per-image learnable labels.

The network player's loss of the per-image label-state methods (docs/methods.md §5): CDUL (Abdelfattah et al.,
"CDUL: CLIP-Driven Unsupervised Learning for Multi-Label Image Classification", ICCV 2023), PLMCL
(Abdelfattah et al., "PLMCL: Partial-Label Momentum Curriculum Learning for Multi-Label Image
Classification", ECCV-W 2022) and G2NetPL (Abdelfattah et al., "G2NetPL: Generic Game-Theoretic Network
for Partial-Label Image Classification", BMVC 2022).

Per cell, with p = sigmoid(s), the label state's soft target ŷ ∈ [0, 1] and weight w ∈ [0, 1]:

    y_obs = +1 : −log p
    y_obs = −1 : −log(1 − p)
    y_obs =  0 : w · (−ŷ·log p − (1 − ŷ)·log(1 − p))

computed on logits (BCE-with-logits: log p = logsigmoid(s)), as the reference code of these methods does;
mean over all B·C cells. The label state supplies `target` (ŷ, detached) and `weight` (w: the confidence
scheduler's mask, all ones without one). A soft-target BCE has the gradient of the per-cell Bernoulli KL
(they differ by ŷ's entropy, a constant for the network).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mlpl.schemas.labels import Observed
from mlpl.stages.families import NO_FAMILY_VALUES
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    make_output,
    register_loss,
    working_logits,
)


@dataclass(frozen=True)
class SoftBceCfg:
    """`soft-bce` has no hyperparameters of its own: targets and weights come from the label state."""


@register_loss(
    name="soft-bce",
    description="BCE on observed labels + confidence-weighted soft-target BCE toward learnable per-image labels",
    reference="Abdelfattah et al. (CDUL ICCV 2023, PLMCL 2022, G2NetPL BMVC 2022); docs/methods.md §5",
    cfg_cls=SoftBceCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
    label_state=("cdul", "plmcl", "g2netpl"),
)
def soft_bce(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: SoftBceCfg,
    state: Mapping[str, torch.Tensor],
) -> LossOutput:
    """BCE on observed cells, `weight`·BCE(p, `target`) on unknown cells.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored (the label state holds this family's pseudo-labels).
        epoch: unused (schedules live in the label state, which sets `weight`).
        cfg: `SoftBceCfg`.
        state: `target` [B, C] soft labels in [0, 1] and `weight` [B, C] in [0, 1] (both without gradient).

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("soft-bce", logits, observed, pseudo, needs_pseudo=False)
    s = working_logits(logits)
    target = state["target"].to(s.dtype).detach()
    weight = state["weight"].to(s.dtype).detach()
    if target.shape != s.shape or weight.shape != s.shape:
        raise ValueError(f"loss 'soft-bce': state target {tuple(target.shape)} / weight {tuple(weight.shape)} "
                         f"!= logits {tuple(s.shape)}")
    log_p, log_not_p = F.logsigmoid(s), F.logsigmoid(-s)
    soft = weight * -(target * log_p + (1 - target) * log_not_p)
    cells = torch.where(observed == Observed.POSITIVE, -log_p,
                        torch.where(observed == Observed.NEGATIVE, -log_not_p, soft))
    return make_output(cells)


