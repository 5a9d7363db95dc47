"""Label state `g2netpl`: the pseudo-label player of a two-player non-zero-sum game (docs/methods.md §5).

Paper: Abdelfattah et al., "G2NetPL: Generic Game-Theoretic Network for Partial-Label Image Classification",
BMVC 2022. The seed paper calls the game zero-sum, with a max over ŷ that would push labels away from the
predictions; docs/methods.md §5 gives the game to build instead, implemented here.

The network player minimises `soft-bce` (BCE on observed cells + confidence-weighted BCE(p, ŷ) on unknown
cells). The pseudo-label player, per unknown cell, minimises

    J(ŷ) = H_b(ŷ) + η·|ŷ − p|,   H_b(ŷ) = −ŷ·log ŷ − (1 − ŷ)·log(1 − ŷ),   p = sigmoid(s).detach

(the entropy drives ŷ to 0 or 1, the penalty keeps it near the prediction) by gradient steps on the logit z
of ŷ = sigmoid(z). By hand: H_b'(ŷ) = log((1 − ŷ)/ŷ) = −z, dŷ/dz = ŷ(1 − ŷ), and the subgradient of |ŷ − p|
is sign(ŷ − p) (0 at ŷ = p), so

    dJ/dz = ŷ(1 − ŷ)·(log((1 − ŷ)/ŷ) + η·sign(ŷ − p)) = ŷ(1 − ŷ)·(η·sign(ŷ − p) − z)
    z ← z − α·dJ/dz,   repeated K times (`inner_steps`) with the same p

computed with −z in place of the log (the same value, finite for any z). The players alternate every step:
after the network's optimiser step, the batch's labels take their K steps against the step's detached logits.
Where the prediction is unsure (|logit(p)| < η) a label settles around p; beyond, once it has crossed p, the
entropy wins and it saturates on p's side.

Ablations of the seed paper's Table II: η = 0 ("without the game penalty", preset `g2netpl-eta0`: the labels
ignore the network — from init = "half" they stay at 0.5, where H_b'(ŷ) = 0, forever; from the teacher they
saturate on the teacher's side) and `scheduler = "off"` ("without scheduler", preset `g2netpl-no-scheduler`).

The table is z (float32, see `soft_labels`); ŷ = sigmoid(z) is derived when read, observed cells read 1/0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.families import HYPERPARAMETER_FAMILIES
from mlpl.stages.train.labelstate import LabelStateContext, RowTable, register_label_state
from mlpl.stages.train.labelstate.soft_labels import (
    STORAGE_DTYPE,
    TEACHER_CLIP,
    SoftLabelCfg,
    SoftLabelState,
    initial_labels,
)
from mlpl.stages.train.losses import EpochState, LossOutput


@dataclass(frozen=True, kw_only=True)
class G2netplCfg(SoftLabelCfg):
    """Hyperparameters of G2NetPL's pseudo-label player.

    Attributes:
        penalty: η, the weight of |ŷ − p| in J (0 = the "without the game penalty" ablation).
        label_lr: α, the step size on z.
        inner_steps: K, gradient steps on z per network step.
    """

    penalty: float
    label_lr: float
    inner_steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty < 0:
            raise InputError(f"penalty (η) must be >= 0, got {self.penalty}")
        if self.label_lr <= 0:
            raise InputError(f"label_lr must be > 0, got {self.label_lr}")
        if self.inner_steps < 1:
            raise InputError(f"inner_steps must be >= 1, got {self.inner_steps}")


def game_gradient(z: torch.Tensor, probs: torch.Tensor, penalty: float) -> torch.Tensor:
    """dJ/dz = ŷ(1 − ŷ)·(η·sign(ŷ − p) − z) with ŷ = sigmoid(z) (see the module docstring)."""
    labels = torch.sigmoid(z)
    return labels * (1 - labels) * (penalty * torch.sign(labels - probs) - z)


def game_steps(z: torch.Tensor, probs: torch.Tensor, penalty: float, lr: float, steps: int) -> torch.Tensor:
    """z after `steps` gradient steps z ← z − α·dJ/dz against fixed predictions `probs`."""
    for _ in range(steps):
        z = z - lr * game_gradient(z, probs, penalty)
    return z


class G2netplState(SoftLabelState):
    """Table `logits` (z, float32 [N, C]); ŷ = sigmoid(z) on unknown cells, the observed value elsewhere."""

    name = "g2netpl"

    def __init__(self, ctx: LabelStateContext, cfg: G2netplCfg) -> None:
        super().__init__(ctx, cfg)
        start = np.clip(initial_labels(ctx, cfg, self.name), TEACHER_CLIP, 1.0 - TEACHER_CLIP)
        self.tables["logits"] = RowTable(np.log(start) - np.log1p(-start), dtype=STORAGE_DTYPE)

    def soft_labels(self, rows: torch.Tensor) -> torch.Tensor:
        observed = self.observed[torch.as_tensor(rows, dtype=torch.long)]
        return torch.where(observed == Observed.UNKNOWN, torch.sigmoid(self.tables["logits"][rows]),
                           (observed == Observed.POSITIVE).float())

    def after_step(self, *, rows: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, out: LossOutput,
                   epoch: EpochState) -> None:
        self.track_epoch(epoch)
        unknown = self.unknown_mask(observed)
        z = self.tables["logits"][rows]
        moved = game_steps(z, self.probabilities(logits), self.cfg.penalty, self.cfg.label_lr, self.cfg.inner_steps)
        self.tables["logits"][rows] = torch.where(unknown, moved, z)


# Neither docs/methods.md nor the project's sources give the paper's values; these are chosen so that a label visited
# once per epoch reaches a decision within a few epochs: η = 1 lets labels follow predictions between
# sigmoid(±1) ≈ 0.27..0.73 and saturates the rest; α = 1 with K = 5 moves a label from 0.5 toward a prediction
# of 0.05 to about 0.15 on its first visit (ŷ(1 − ŷ) ≤ 0.25 bounds each step by α/4·(η + |z|)). τ0 = 0.25 as
# PLMCL. The same values for every family, digits included (nothing tunes them per dataset).
_G2NETPL_DEFAULTS = {"tau0": 0.25, "penalty": 1.0, "label_lr": 1.0, "inner_steps": 5}


@register_label_state(
    name="g2netpl",
    description="G2NetPL: per-image soft labels as the pseudo-label player of a non-zero-sum game "
                "(entropy + penalty toward the prediction); confidence-aware easy-to-hard weights",
    reference="Abdelfattah et al., G2NetPL, BMVC 2022; docs/methods.md §5",
    cfg_cls=G2netplCfg,
    dataset_defaults={name: dict(_G2NETPL_DEFAULTS) for name in HYPERPARAMETER_FAMILIES},
    uses_sims=lambda cfg: cfg.init == "teacher",
)
def create_g2netpl(ctx: LabelStateContext, cfg: G2netplCfg) -> G2netplState:
    return G2netplState(ctx, cfg)


