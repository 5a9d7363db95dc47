"""ROLE loss `role`: the network and a per-image label estimator teach each other (docs/methods.md §3.2).

Paper: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.

With p = sigmoid(s) the network's predictions and q = sigmoid(g[rows]) the estimates of the `role` label
state (with their gradient):

    obs1   = [y_obs=1]·nlog(p)                      obs2   = [y_obs=1]·nlog(q)
    cross1 = q.detach·nlog(p) + (1−q.detach)·nlog(1−p)
    cross2 = p.detach·nlog(q) + (1−p.detach)·nlog(1−q)
    loss   = mean_cells(0.5·(obs1 + obs2) + 0.5·(cross1 + cross2)) + 0.5·(EPR(p) + EPR(q))

with EPR(x) = (mean_b Σ_c x − m)²/C². Each player learns from the other's detached output only, so the
network's gradient comes from obs1, cross1, EPR(p) and the estimator's from obs2, cross2, EPR(q).

ε = 1e-5 in nlog, as in the released code's `neg_log`. Observed negatives (partial-label regimes; the released
code asserts there are none) add nlog(1−p) to obs1 and nlog(1−q) to obs2, mirroring the observed positives;
under single-positive labels this changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.families import M_FROM_FAMILY
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
class RoleLossCfg:
    """Hyperparameters of the ROLE loss.

    Attributes:
        m: expected number of positives per image (docs/methods.md §1.1), the target of both regularisers.
    """

    m: float

    def __post_init__(self) -> None:
        if self.m < 0:
            raise InputError(f"m must be >= 0, got {self.m}")


def _observed_terms(x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """nlog(x) on observed positives, nlog(1 − x) on observed negatives, 0 elsewhere."""
    return torch.where(observed == Observed.POSITIVE, nlog(x, EPS),
                       torch.where(observed == Observed.NEGATIVE, nlog(1 - x, EPS), torch.zeros_like(x)))


def _cross_entropy_toward(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """t·nlog(x) + (1 − t)·nlog(1 − x) with the target t detached."""
    target = target.detach()
    return target * nlog(x, EPS) + (1 - target) * nlog(1 - x, EPS)


@register_loss(
    name="role",
    description="ROLE: online label estimation; the network and a learnable label matrix teach each other",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.2",
    cfg_cls=RoleLossCfg,
    # m: the family's expected positives, docs/methods.md §1.1 (the released code's table has COCO 2.5; 2.9 is used)
    dataset_defaults=M_FROM_FAMILY,
    needs_pseudo=False,
    label_state="role",
)
def role(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: RoleLossCfg,
    state: Mapping[str, torch.Tensor],
) -> LossOutput:
    """ROLE: observed-label terms and cross terms for the network and the label estimator, plus both EPRs.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored (the estimator is ROLE's source of labels).
        epoch: unused (no schedule).
        cfg: `RoleLossCfg`.
        state: `estimate` [B, C], sigmoid(g[rows]) from the `role` label state, with its gradient.

    Returns:
        The per-cell terms and the regulariser 0.5·(EPR(p) + EPR(q)).
    """
    check_loss_inputs("role", logits, observed, pseudo, needs_pseudo=False)
    p = torch.sigmoid(working_logits(logits))
    q = state["estimate"]
    if q.shape != p.shape:
        raise ValueError(f"loss 'role': state estimate {tuple(q.shape)} != logits {tuple(p.shape)}")
    q = q.to(p.device, p.dtype)  # a differentiable cast: g keeps its gradient
    cells = 0.5 * (_observed_terms(p, observed) + _observed_terms(q, observed)) \
        + 0.5 * (_cross_entropy_toward(p, q) + _cross_entropy_toward(q, p))
    regulariser = 0.5 * (expected_positives_regulariser(p, cfg.m) + expected_positives_regulariser(q, cfg.m))
    return make_output(cells, regulariser)


