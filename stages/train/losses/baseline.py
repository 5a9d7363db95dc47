"""Baseline losses `bce`, `an`, `an-ls`, `wan` and `epr` (docs/methods.md §3.1).

Paper: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.

All use docs/methods.md's `nlog(x) = −log(sigmoid(s) + ε)` with ε = 1e-5, not BCE-with-logits: the published
numbers of this family come from code that computes `-log(preds + 1e-5)`, which caps a cell's term at
−log(1e-5) ≈ 11.5 and so changes what a confidently wrong cell contributes. Matching it keeps results
comparable with the literature. (`bce` takes ε as an option: AEVLP's BCE+DAMP row uses its code's 1e-7.)

The reference code rejects observed negatives (−1); they occur in the partial-label regimes (docs/methods.md §1.4).
How each loss treats such a cell is stated in its docstring: `an`, `an-ls` and `wan` give it their
negative term (every cell that is not an observed positive is a negative for them); `epr` gives it no term,
as docs/methods.md §3.1 writes ("others 0"), unless `observed_negative = "negative"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.families import M_FROM_FAMILY, NO_FAMILY_VALUES
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    expected_positives_regulariser,
    make_output,
    nlog,
    register_loss,
    working_logits,
)

EPS = 1e-5  # Cole et al.'s LOG_EPSILON


@dataclass(frozen=True, kw_only=True)
class BceCfg:
    """Options of `bce`.

    Attributes:
        undefined: what an unknown cell without a defined pseudo-label (0, or no pseudo-labeller) gets:
            "ignore" no term (the full-label and observed-only BCE), "negative" nlog(1−p) (the released
            AEVLP code's BCE+DAMP, AEVLP Table 2).
        eps: ε of nlog; 1e-5 is Cole et al.'s, the AEVLP code uses 1e-7.
    """

    undefined: Literal["ignore", "negative"] = "ignore"
    eps: float = EPS

    def __post_init__(self) -> None:
        if self.undefined not in ("ignore", "negative"):
            raise InputError(f"undefined must be 'ignore' or 'negative', got {self.undefined!r}")
        if not 0.0 < self.eps < 1.0:
            raise InputError(f"eps must be in (0, 1), got {self.eps}")


@dataclass(frozen=True)
class AnCfg:
    """`an` has no hyperparameters."""


@dataclass(frozen=True, kw_only=True)
class AnLsCfg:
    """Options of `an-ls`.

    Attributes:
        smoothing: the symmetric label-smoothing coefficient (Cole et al.'s `ls_coef`): a positive's target
            becomes 1 − smoothing, a negative's smoothing.
    """

    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 0.5:
            raise InputError(f"smoothing must be in [0, 0.5), got {self.smoothing}")


@dataclass(frozen=True)
class WanCfg:
    """`wan` has no hyperparameters (the weight 1/(C−1) comes from the number of classes)."""


@dataclass(frozen=True, kw_only=True)
class EprCfg:
    """Options of `epr`.

    Attributes:
        m: expected number of positives per image (docs/methods.md §1.1; per dataset).
        observed_negative: what an observed −1 gets: "ignore" no term (docs/methods.md §3.1: "others 0"),
            "negative" nlog(1−p) (uses the observed negatives of partial-label regimes).
    """

    m: float
    observed_negative: Literal["ignore", "negative"] = "ignore"

    def __post_init__(self) -> None:
        if self.m < 0:
            raise InputError(f"m must be >= 0, got {self.m}")
        if self.observed_negative not in ("ignore", "negative"):
            raise InputError(f"observed_negative must be 'ignore' or 'negative', got {self.observed_negative!r}")


# m: the family's expected positives, docs/methods.md §1.1 (Cole et al.'s code has COCO 2.5; the later
# papers use 2.9, as stages/families.py does)
_EPR_DEFAULTS = M_FROM_FAMILY


@register_loss(
    name="bce",
    description="binary cross-entropy on observed labels (full-label upper bound); unknowns take the "
                "pseudo-label when one is given",
    reference="docs/methods.md §3.1; AEVLP Table 2 (BCE+DAMP)",
    cfg_cls=BceCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
)
def bce(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: BceCfg,
) -> LossOutput:
    """Binary cross-entropy over the labelled cells.

    Target +1 → nlog(p), −1 → nlog(1−p), 0 (undefined) → no term (still counted in the mean), or nlog(1−p)
    with `cfg.undefined = "negative"`. The target is the observed label; where it is unknown (0) and `pseudo`
    is given, the pseudo-label. Under the `full` regime every cell is observed, so this is the full-label
    upper bound; with DAMP pseudo-labels, `undefined = "negative"` and ε = 1e-7 it is "BCE+DAMP" of AEVLP
    Table 2. Without a pseudo-labeller every unknown cell is undefined, so "negative" makes it AN.

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
    negative = nlog(1 - p, cfg.eps)
    undefined = negative if cfg.undefined == "negative" else torch.zeros_like(p)
    cells = torch.where(target == Pseudo.POSITIVE, nlog(p, cfg.eps),
                        torch.where(target == Pseudo.NEGATIVE, negative, undefined))
    return make_output(cells)


@register_loss(
    name="an",
    description="assume negative: every unobserved label is a negative",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.1",
    cfg_cls=AnCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
)
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


@register_loss(
    name="an-ls",
    description="assume negative with symmetric label smoothing (0.1)",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.1",
    cfg_cls=AnLsCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
)
def an_ls(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: AnLsCfg,
) -> LossOutput:
    """AN with symmetric label smoothing ε_ls (`cfg.smoothing`, 0.1).

    Observed positive → (1−ε_ls)·nlog(p) + ε_ls·nlog(1−p); every other cell, unknown or observed −1 (AN
    treats both as negatives, so both are smoothed) → (1−ε_ls)·nlog(1−p) + ε_ls·nlog(p).

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: unused (no schedule).
        cfg: `AnLsCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("an-ls", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    log_p, log_not_p, smoothing = nlog(p, EPS), nlog(1 - p, EPS), cfg.smoothing
    cells = torch.where(observed == Observed.POSITIVE, (1 - smoothing) * log_p + smoothing * log_not_p,
                        (1 - smoothing) * log_not_p + smoothing * log_p)
    return make_output(cells)


@register_loss(
    name="wan",
    description="weak assume negative: assumed negatives weighted 1/(C-1)",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.1",
    cfg_cls=WanCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    needs_pseudo=False,
)
def wan(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: WanCfg,
) -> LossOutput:
    """Weak assume negative: AN with each unknown cell's term divided by C − 1.

    Observed positive → nlog(p); unknown → nlog(1−p)/(C−1); observed −1 → nlog(1−p), not divided: docs/methods.md
    3.1 divides the y_obs = 0 term only, and the down-weighting is for negatives that are assumed, while an
    observed negative is a label as certain as the observed positive.

    Args:
        logits: [B, C] logits (C >= 2).
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: unused (no schedule).
        cfg: `WanCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("wan", logits, observed, pseudo, needs_pseudo=False)
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"loss 'wan' weighs unknown cells by 1/(C−1) and needs C >= 2 classes, got C={num_classes}")
    p = torch.sigmoid(working_logits(logits))
    log_not_p = nlog(1 - p, EPS)
    cells = torch.where(observed == Observed.POSITIVE, nlog(p, EPS),
                        torch.where(observed == Observed.UNKNOWN, log_not_p / (num_classes - 1), log_not_p))
    return make_output(cells)


@register_loss(
    name="epr",
    description="expected positive regularisation: observed positives plus a penalty pulling the predicted "
                "number of positives toward m",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.1",
    cfg_cls=EprCfg,
    dataset_defaults=_EPR_DEFAULTS,
    needs_pseudo=False,
)
def epr(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: EprCfg,
) -> LossOutput:
    """Expected positive regularisation: observed positives only, plus a penalty on the predicted count.

    Observed positive → nlog(p); unknown → no term; observed −1 → no term (docs/methods.md §3.1: "others 0"), or
    nlog(1−p) with `cfg.observed_negative = "negative"`. Regulariser, unweighted as in the reference code:
    ((mean over the batch of Σ_c p) − m)² / C².

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: unused (no schedule).
        cfg: `EprCfg`.

    Returns:
        The per-cell terms and the regulariser.
    """
    check_loss_inputs("epr", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    zero = torch.zeros_like(p)
    negative = nlog(1 - p, EPS) if cfg.observed_negative == "negative" else zero
    cells = torch.where(observed == Observed.POSITIVE, nlog(p, EPS),
                        torch.where(observed == Observed.NEGATIVE, negative, zero))
    return make_output(cells, expected_positives_regulariser(p, cfg.m))


