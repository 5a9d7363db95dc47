"""Baseline losses `bce` and `an` (SPEC.md 3.1).

Paper: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.

Both use SPEC.md's `nlog(x) = −log(sigmoid(s) + ε)` with ε = 1e-5, not BCE-with-logits: the published
numbers of this family come from code that computes `-log(preds + 1e-5)`, which caps a cell's term at
−log(1e-5) ≈ 11.5 and so changes what a confidently wrong cell contributes. Matching it keeps results
comparable with the literature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from schemas.labels import Observed, Pseudo
from stages.train.losses import (
    HYPERPARAMETER_DATASETS,
    LOSSES,
    EpochState,
    LossInfo,
    LossOutput,
    check_loss_inputs,
    make_output,
    nlog,
    working_logits,
)

EPS = 1e-5  # Cole et al.'s LOG_EPSILON


@dataclass(frozen=True)
class BceCfg:
    """`bce` has no hyperparameters."""


@dataclass(frozen=True)
class AnCfg:
    """`an` has no hyperparameters."""


def bce(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: BceCfg,
) -> LossOutput:
    """Binary cross-entropy over the labelled cells.

    Target +1 → nlog(p), −1 → nlog(1−p), 0 → no term (still counted in the mean). The target is the
    observed label; where it is unknown (0) and `pseudo` is given, the pseudo-label. Under the `full`
    regime every cell is observed, so this is the full-label upper bound; with DAMP pseudo-labels it is
    "BCE+DAMP" of AEVLP Table 2.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: [B, C] `Pseudo` values or None.
        epoch: unused (no schedule).
        cfg: `BceCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("bce", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    target = observed if pseudo is None else torch.where(observed == Observed.UNKNOWN, pseudo.to(observed.dtype),
                                                         observed)
    zero = torch.zeros_like(p)
    cells = torch.where(target == Pseudo.POSITIVE, nlog(p, EPS),
                        torch.where(target == Pseudo.NEGATIVE, nlog(1 - p, EPS), zero))
    return make_output(cells)


def an(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: AnCfg,
) -> LossOutput:
    """Assume negative: observed positives → nlog(p), every other cell (unknown or observed −1) → nlog(1−p).

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored (AN assumes every unknown negative).
        epoch: unused (no schedule).
        cfg: `AnCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("an", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    cells = torch.where(observed == Observed.POSITIVE, nlog(p, EPS), nlog(1 - p, EPS))
    return make_output(cells)


_NO_DATASET_DEFAULTS: dict[str, dict] = {name: {} for name in HYPERPARAMETER_DATASETS}

LOSSES.register(LossInfo(
    name="bce",
    description="binary cross-entropy on observed labels (full-label upper bound); unknowns take the "
                "pseudo-label when one is given",
    reference="SPEC.md 3.1; AEVLP Table 2 (BCE+DAMP)",
    fn=bce,
    cfg_cls=BceCfg,
    dataset_defaults=_NO_DATASET_DEFAULTS,
    needs_pseudo=False,
))
LOSSES.register(LossInfo(
    name="an",
    description="assume negative: every unobserved label is a negative",
    reference="Cole et al., CVPR 2021; SPEC.md 3.1",
    fn=an,
    cfg_cls=AnCfg,
    dataset_defaults=_NO_DATASET_DEFAULTS,
    needs_pseudo=False,
))
