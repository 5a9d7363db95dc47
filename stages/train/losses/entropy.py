"""The entropy family: `em` (docs/methods.md §3.1), `em-apl` (docs/methods.md §3.3) and `vlpl` (docs/methods.md §3.8).

Papers: Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels",
ECCV 2022 (EM, APL); Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label Learning",
2023 (VLPL).

An unknown label is not assumed negative: its term is −α·H(p), the negative binary entropy, so training
*maximises* the entropy of unknown predictions, pulling them toward 0.5 instead of pushing them to 0 as AN
does (which is why EM models are read at a threshold of 0.75, docs/methods.md §2). The loss can therefore be negative.

Every log is docs/methods.md's `nlog(x) = −log(x + ε)` with ε = 1e-5: the released EM/APL and VLPL code computes
`-log(preds + 1e-5)` for the entropy as well as for the positive term, so H(p) here is
−p·log(p + ε) − (1 − p)·log(1 − p + ε), exactly the reference's value.

Observed negatives (partial-label regimes): the released EM code asserts there are none, and its EM-APL code
stores soft negatives as negative label values, so it would read an observed −1 as a soft label of 1 (a
positive target). Neither is a usable definition; here an observed −1 gets nlog(1 − p), the term Cole et
al.'s code (the base of both repositories) gives observed negatives (`loss_iu`). Under the single-positive
regimes the papers use there are no observed negatives, so this never changes their numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    make_output,
    nlog,
    register_loss,
    working_logits,
)

EPS = 1e-5  # the released EM/APL and VLPL code's LOG_EPSILON

# α, the weight of the entropy term (docs/methods.md §3.1). digits: VOC's, the nearest label space (10 classes with
# 2.5 positives per image against VOC's 20 with 1.5; COCO/NUS have 80, CUB 312).
_ALPHA = {"voc": 0.2, "coco": 0.1, "nus": 0.1, "cub": 0.01, "digits": 0.2}
# β, the weight of APL's soft negatives (docs/methods.md §3.3). digits: VOC's, for the same reason as α.
_BETA = {"voc": 0.02, "coco": 0.9, "nus": 0.2, "cub": 0.4, "digits": 0.02}


def _check_weight(name: str, value: float) -> None:
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, kw_only=True)
class EmCfg:
    """Hyperparameters of EM (docs/methods.md §3.1).

    Attributes:
        alpha: weight of the entropy term on unknown labels (per dataset).
    """

    alpha: float

    def __post_init__(self) -> None:
        _check_weight("alpha", self.alpha)


@dataclass(frozen=True, kw_only=True)
class EmAplCfg(EmCfg):
    """Hyperparameters of EM+APL (docs/methods.md §3.3): EM's, plus the soft negatives' weight.

    Attributes:
        beta: weight of the soft-negative term (per dataset).
    """

    beta: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weight("beta", self.beta)


@dataclass(frozen=True, kw_only=True)
class VlplLossCfg(EmCfg):
    """Hyperparameters of the VLPL loss (docs/methods.md §3.8): EM's, plus the positive pseudo-labels' term.

    Attributes:
        positive_weight: weight of a positive pseudo-label's term (the released code's `beta_pos`).
        positive_target: smoothed target of a positive pseudo-label (weight of nlog(p); 1 − it weighs nlog(1−p)).
    """

    positive_weight: float = 0.7
    positive_target: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weight("positive_weight", self.positive_weight)
        if not 0.0 <= self.positive_target <= 1.0:
            raise InputError(f"positive_target must be in [0, 1], got {self.positive_target}")


def negative_entropy_term(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """−α·H(p) with H(p) = −p·log(p + ε) − (1 − p)·log(1 − p + ε) (the EM term of an unknown label)."""
    return -alpha * (p * nlog(p, EPS) + (1 - p) * nlog(1 - p, EPS))


def soft_target_term(p: torch.Tensor, target: torch.Tensor | float, weight: float) -> torch.Tensor:
    """weight·(t·nlog(p) + (1 − t)·nlog(1 − p)): APL's soft negatives and VLPL's smoothed positives."""
    return weight * (target * nlog(p, EPS) + (1 - target) * nlog(1 - p, EPS))


def _em_cells(p: torch.Tensor, observed: torch.Tensor, alpha: float) -> torch.Tensor:
    """EM per cell: observed +1 → nlog(p), observed −1 → nlog(1 − p), unknown → −α·H(p)."""
    return torch.where(observed == Observed.POSITIVE, nlog(p, EPS),
                       torch.where(observed == Observed.NEGATIVE, nlog(1 - p, EPS),
                                   negative_entropy_term(p, alpha)))


@register_loss(
    name="em",
    description="entropy maximisation: observed positives plus the negative entropy of unknown labels",
    reference="Zhou et al., ECCV 2022; docs/methods.md §3.1",
    cfg_cls=EmCfg,
    dataset_defaults={name: {"alpha": alpha} for name, alpha in _ALPHA.items()},
    needs_pseudo=False,
)
def em(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: EmCfg,
) -> LossOutput:
    """Entropy maximisation: nlog(p) on observed positives, −α·H(p) on unknown labels.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values (an observed −1 gets nlog(1 − p); see the module docstring).
        pseudo: ignored (EM uses no pseudo-labels).
        epoch: unused (no schedule).
        cfg: `EmCfg`.

    Returns:
        The per-cell terms (negative on unknown cells) and a zero regulariser.
    """
    check_loss_inputs("em", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    return make_output(_em_cells(p, observed, cfg.alpha))


@register_loss(
    name="em-apl",
    description="EM plus asymmetric pseudo-labelling: the lowest-scoring unknown labels become frozen soft "
                "negatives",
    reference="Zhou et al., ECCV 2022; docs/methods.md §3.3",
    cfg_cls=EmAplCfg,
    dataset_defaults={name: {"alpha": _ALPHA[name], "beta": _BETA[name]} for name in _ALPHA},
    needs_pseudo=False,
    label_state="apl",
)
def em_apl(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: EmAplCfg,
    state: Mapping[str, torch.Tensor],
) -> LossOutput:
    """EM plus APL's soft negatives: on an unknown cell the `apl` label state made a soft negative, the term is
    β·(p_old·nlog(p) + (1 − p_old)·nlog(1 − p)) instead of −α·H(p); every other cell is EM's.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values; an observed label wins over a soft-negative flag.
        pseudo: ignored (the label state holds APL's pseudo-labels).
        epoch: unused (APL's schedule lives in the label state).
        cfg: `EmAplCfg`.
        state: `soft_negative` [B, C] bool and `target` [B, C] p_old (frozen predictions; read where flagged).

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("em-apl", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    soft = state["soft_negative"].to(p.device, torch.bool)
    target = state["target"].to(p.device, p.dtype).detach()
    if soft.shape != p.shape or target.shape != p.shape:
        raise ValueError(f"loss 'em-apl': state soft_negative {tuple(soft.shape)} / target {tuple(target.shape)} "
                         f"!= logits {tuple(p.shape)}")
    soft = soft & (observed == Observed.UNKNOWN)
    # where() picks the branch per cell; the other branch's value (target 0 on unflagged cells) is never used
    cells = torch.where(soft, soft_target_term(p, target, cfg.beta), _em_cells(p, observed, cfg.alpha))
    return make_output(cells)


@register_loss(
    name="vlpl",
    description="VLPL: EM plus smoothed positive pseudo-labels from the teacher",
    reference="Xing et al., 2023 (VLPL); docs/methods.md §3.8",
    cfg_cls=VlplLossCfg,
    dataset_defaults={name: {"alpha": alpha, "positive_weight": 0.7, "positive_target": 0.9}
                      for name, alpha in _ALPHA.items()},
    needs_pseudo=True,
)
def vlpl(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: VlplLossCfg,
) -> LossOutput:
    """VLPL loss: EM plus positive pseudo-labels; negative pseudo-labels get no term.

    With `final` = the pseudo-label where the observed label is unknown: observed +1 → nlog(p); unknown with
    pseudo +1 → w·[t·nlog(p) + (1 − t)·nlog(1 − p)] (w = 0.7, t = 0.9); unknown with pseudo −1 → 0 (the
    released code's negative term is commented out); unknown with pseudo 0 → −α·H(p); observed −1 →
    nlog(1 − p) (see the module docstring; the released code, reading `final`, would drop it).

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: [B, C] `Pseudo` values (required; all-zero pseudo-labels reduce VLPL to EM).
        epoch: unused (the released code's warm-up is 0 epochs: pseudo-labels from the first).
        cfg: `VlplLossCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("vlpl", logits, observed, pseudo, needs_pseudo=True)
    assert pseudo is not None  # checked above; narrows the type
    p = torch.sigmoid(working_logits(logits))
    unknown = observed == Observed.UNKNOWN
    positive = soft_target_term(p, cfg.positive_target, cfg.positive_weight)
    cells = torch.where(unknown & (pseudo == Pseudo.POSITIVE), positive,
                        torch.where(unknown & (pseudo == Pseudo.NEGATIVE), torch.zeros_like(p),
                                    _em_cells(p, observed, cfg.alpha)))
    return make_output(cells)


