"""`partial-bce`: BCE over the observed labels, normalised by how many labels an image has (docs/methods.md §3.1).

Paper: Durand et al., "Learning a Deep ConvNet for Multi-label Classification with Partial Labels",
CVPR 2019. For the partial-label regimes (docs/methods.md §1.4), where a kept cell is an observed positive or an
observed negative.

Per image, with q the fraction of its C cells that are observed and g(q) = a·q^γ + b:

    loss_image = −(g(q)/C) · Σ_c ([y_obs=1]·log p_c + [y_obs=−1]·log(1 − p_c))

g(1) = 1 (a fully labelled image weighs as plain BCE), and an image with few labels weighs more per label
(g(0.1) ≈ 5 with docs/methods.md's a = −4.45, b = 5.45, γ = 1), so that every image's loss has a comparable scale.
The logs are exact, log p = logsigmoid(s): Durand et al. write the loss on logits, and docs/methods.md gives plain
`log` (no ε) for this loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mlpl.schemas.errors import InputError
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


@dataclass(frozen=True, kw_only=True)
class PartialBceCfg:
    """The normalisation g(q) = a·q^γ + b of `partial-bce` (docs/methods.md §3.1; the same for every dataset).

    Attributes:
        a: slope of g; with b, fixes g(1) = a + b = 1 and g(0.1) ≈ 5.
        b: offset of g (its limit as q → 0).
        gamma: exponent γ of q.
    """

    a: float = -4.45
    b: float = 5.45
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise InputError(f"gamma must be > 0, got {self.gamma}")
        # g is monotone on (0, 1] for γ > 0, between b (q → 0) and a + b (q = 1): a negative weight there
        # would reward wrong predictions.
        if self.b < 0 or self.a + self.b < 0:
            raise InputError(f"g(q) = a·q^gamma + b must be >= 0 on (0, 1]: need b >= 0 and a + b >= 0, "
                             f"got a={self.a}, b={self.b}")


def label_proportion_weight(observed: torch.Tensor, cfg: PartialBceCfg, dtype: torch.dtype) -> torch.Tensor:
    """g(q) per image as a [B, 1] column: q = observed cells / C; 0 for an image with no observed cell.

    Args:
        observed: [B, C] `Observed` values.
        cfg: `PartialBceCfg`.
        dtype: floating dtype of the result.
    """
    q = (observed != Observed.UNKNOWN).sum(dim=1, keepdim=True).to(dtype) / observed.shape[1]
    return torch.where(q > 0, cfg.a * q ** cfg.gamma + cfg.b, torch.zeros_like(q))


@register_loss(
    name="partial-bce",
    description="partial-label BCE over observed labels, each image weighted by g(fraction of its labels "
                "observed)",
    reference="Durand et al., CVPR 2019; docs/methods.md §3.1",
    cfg_cls=PartialBceCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
)
def partial_bce(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: PartialBceCfg,
) -> LossOutput:
    """Durand et al.'s partial-label BCE.

    Per cell: g(q_b)·(−log p) on an observed positive, g(q_b)·(−log(1−p)) on an observed negative, 0 on an
    unknown cell. The project's one reduction is the mean over all B·C cells, so
    `total = (1/(B·C)) Σ_b g(q_b) Σ_c term = (1/B) Σ_b (g(q_b)/C) Σ_c term`: docs/methods.md's per-image loss
    averaged over the batch, with no further scaling of the cells. An image with no observed cell
    contributes 0.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored (the loss reads observed labels only).
        epoch: unused (no schedule).
        cfg: `PartialBceCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("partial-bce", logits, observed, pseudo, needs_pseudo=False)
    s = working_logits(logits)
    weight = label_proportion_weight(observed, cfg, s.dtype)
    zero = torch.zeros_like(s)
    terms = torch.where(observed == Observed.POSITIVE, -F.logsigmoid(s),
                        torch.where(observed == Observed.NEGATIVE, -F.logsigmoid(-s), zero))
    return make_output(weight * terms)


