"""Large-loss modification `ll-r`, `ll-ct`, `ll-cp` (docs/methods.md §3.4): the largest losses among unknown labels
are taken for hidden positives and rejected or corrected.

Paper: Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification", CVPR 2022.

Per cell, BCE on logits as the reference code computes it: L = BCE(s, [y_obs = +1]) (assume negative;
observed negatives keep target 0) and Lc = BCE(s, 1). From epoch t ≥ 2, among the batch's unknown cells the
k largest L set a threshold θ (the k-th largest); every unknown cell with L ≥ θ (ties included) is rejected
(LL-R: term 0) or corrected (LL-Ct, LL-Cp: term Lc). With Δ in per cent of the batch's B·C cells:

    k = ceil(B·C·(t−1)·Δ/100)   LL-R, LL-Ct (the rejected share grows every epoch)
    k = ceil(B·C·Δ/100)         LL-Cp (a constant share; its corrections also become permanent positives
                                through the `ll-cp` label state, so they accumulate in the labels instead)

The reference code keeps `clean_rate = 1 − (t−1)·Δ/100` as a float decremented once per epoch and takes
ceil(B·C·(1 − clean_rate)); its rounding error adds one cell where B·C·(t−1)·Δ/100 is a whole number (e.g.
B·C = 320, Δ = 0.5, t = 6: 9 instead of 8). Here k is computed exactly (rational arithmetic on Δ's decimal
value). The reference's threshold is also taken over a matrix in which observed cells are 0, so a k larger
than the number of unknown cells gives θ = 0 and turns every cell, observed positives included, into a
candidate; here such a k selects every unknown cell and observed cells are never candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    make_output,
    register_loss,
    working_logits,
)


def _deltas(spec: float, digits: float) -> dict[str, dict]:
    return {**{name: {"delta": spec} for name in ("voc", "coco", "nus", "cub")}, "digits": {"delta": digits}}


@dataclass(frozen=True, kw_only=True)
class LargeLossCfg:
    """Hyperparameters of the large-loss rules.

    Attributes:
        delta: Δ, in per cent of the batch's cells: how many more unknown cells are modified each epoch
            (LL-R, LL-Ct), or the constant share modified from epoch 2 (LL-Cp).
    """

    delta: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.delta <= 100.0:
            raise InputError(f"delta (per cent of cells) must be in [0, 100], got {self.delta}")


def large_loss_count(num_cells: int, epoch: int, delta: float, cumulative: bool) -> int:
    """k, the number of largest unknown losses modified in a batch of `num_cells` = B·C cells.

    Args:
        num_cells: B·C.
        epoch: 1-based epoch t; epoch 1 modifies nothing.
        delta: Δ in per cent of cells.
        cumulative: True for LL-R/LL-Ct (k grows with t − 1), False for LL-Cp (constant from epoch 2).
    """
    if epoch < 2:
        return 0
    share = Fraction(str(delta)) / 100 * (epoch - 1 if cumulative else 1)
    return math.ceil(num_cells * share)


def select_large_losses(losses: torch.Tensor, unknown: torch.Tensor, k: int) -> torch.Tensor:
    """The unknown cells whose loss is at least the k-th largest loss among unknown cells (ties included).

    Args:
        losses: [B, C] per-cell losses (read without gradient).
        unknown: [B, C] bool, the candidates.
        k: how many largest losses set the threshold; k ≤ 0 selects nothing, k ≥ the number of unknown cells
            selects every unknown cell.

    Returns:
        [B, C] bool mask (False on every cell that is not unknown).
    """
    candidates = losses.detach()[unknown]
    if k <= 0 or candidates.numel() == 0:
        return torch.zeros_like(unknown, dtype=torch.bool)
    if k >= candidates.numel():
        return unknown.clone()
    threshold = torch.topk(candidates, k).values[-1]
    return unknown & (losses.detach() >= threshold)


def large_loss_terms(logits: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Lc): BCE-with-logits against [observed = +1], and against target 1."""
    target = (observed == Observed.POSITIVE).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    corrected = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    return loss, corrected


def large_loss_selection(logits: torch.Tensor, observed: torch.Tensor, epoch: EpochState, delta: float,
                         cumulative: bool) -> torch.Tensor:
    """The [B, C] bool mask of unknown cells a large-loss rule modifies in this batch and epoch.

    The one selection rule shared by the losses and the `ll-ct` pseudo-labeller.

    Args:
        logits: [B, C] logits (read without gradient).
        observed: [B, C] `Observed` values; only unknown (0) cells are candidates.
        epoch: the current epoch.
        delta: Δ in per cent of cells.
        cumulative: see `large_loss_count`.
    """
    logits = working_logits(logits.detach())
    loss, _ = large_loss_terms(logits, observed)
    k = large_loss_count(logits.numel(), epoch.epoch, delta, cumulative)
    return select_large_losses(loss, observed == Observed.UNKNOWN, k)


def _large_loss(name: str, logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor | None,
                epoch: EpochState, cfg: LargeLossCfg, *, correct: bool, cumulative: bool) -> LossOutput:
    check_loss_inputs(name, logits, observed, pseudo, needs_pseudo=False)
    s = working_logits(logits)
    loss, corrected_loss = large_loss_terms(s, observed)
    selected = large_loss_selection(s, observed, epoch, cfg.delta, cumulative)
    replacement = corrected_loss if correct else torch.zeros_like(loss)
    cells = torch.where(selected, replacement, loss)
    return make_output(cells, aux={"corrected" if correct else "rejected": selected})


# Δ: docs/methods.md §3.4 for the four real families. digits: the documented value × 6,
# the ratio of hidden positives per cell
# (digits (2.5 − 1)/10 = 0.15 against VOC's (1.5 − 1)/20 = 0.025), so that the modified share keeps the same
# proportion to the hidden positives as in the paper.
LL_R_DEFAULTS = _deltas(0.5, 3.0)
LL_CT_DEFAULTS = _deltas(0.2, 1.2)
LL_CP_DEFAULTS = _deltas(0.1, 0.6)


@register_loss(
    name="ll-r",
    description="large loss rejection: assume negative, the largest unknown losses dropped (a growing share)",
    reference="Kim et al., CVPR 2022 (LL-R); docs/methods.md §3.4",
    cfg_cls=LargeLossCfg,
    dataset_defaults=LL_R_DEFAULTS,
    needs_pseudo=False,
)
def ll_r(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: LargeLossCfg,
) -> LossOutput:
    """LL-R: assume-negative BCE whose largest unknown losses are rejected (term 0) from epoch 2.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: the current epoch (k grows with it).
        cfg: `LargeLossCfg`.

    Returns:
        The per-cell terms, a zero regulariser and `aux["rejected"]` [B, C] bool.
    """
    return _large_loss("ll-r", logits, observed, pseudo, epoch, cfg, correct=False, cumulative=True)


@register_loss(
    name="ll-ct",
    description="large loss correction (temporary): the largest unknown losses get target 1 for the step",
    reference="Kim et al., CVPR 2022 (LL-Ct); docs/methods.md §3.4",
    cfg_cls=LargeLossCfg,
    dataset_defaults=LL_CT_DEFAULTS,
    needs_pseudo=False,
)
def ll_ct(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: LargeLossCfg,
) -> LossOutput:
    """LL-Ct: the largest unknown losses are corrected (target 1) for this step only, from epoch 2.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: the current epoch (k grows with it).
        cfg: `LargeLossCfg`.

    Returns:
        The per-cell terms, a zero regulariser and `aux["corrected"]` [B, C] bool.
    """
    return _large_loss("ll-ct", logits, observed, pseudo, epoch, cfg, correct=True, cumulative=True)


@register_loss(
    name="ll-cp",
    description="large loss correction (permanent): the largest unknown losses become observed positives",
    reference="Kim et al., CVPR 2022 (LL-Cp); docs/methods.md §3.4",
    cfg_cls=LargeLossCfg,
    dataset_defaults=LL_CP_DEFAULTS,
    needs_pseudo=False,
    label_state="ll-cp",
)
def ll_cp(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: LargeLossCfg,
    state: dict[str, torch.Tensor] | None = None,
) -> LossOutput:
    """LL-Cp: a constant share of the largest unknown losses is corrected (target 1) from epoch 2; the `ll-cp`
    label state makes the corrections permanent, so `observed` already holds earlier ones as +1.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values with earlier corrections as +1 (the label state's `observed_for`).
        pseudo: ignored.
        epoch: the current epoch (only whether it is the first matters).
        cfg: `LargeLossCfg`.
        state: the `ll-cp` label state's batch view (empty: the state acts through `observed`).

    Returns:
        The per-cell terms, a zero regulariser and `aux["corrected"]` [B, C] bool.
    """
    return _large_loss("ll-cp", logits, observed, pseudo, epoch, cfg, correct=True, cumulative=False)


