"""Label state `plmcl`: per-image soft labels moved toward the network by heavy-ball momentum (docs/methods.md §5).

Paper: Abdelfattah et al., "PLMCL: Partial-Label Momentum Curriculum Learning for Multi-Label Image
Classification", ECCV-W 2022. The seed paper's update `ŷ + α(ŷ − ŷ_prev) − βv` with v = ŷ − ŷ_prev never
moves ŷ from its start; docs/methods.md §5 gives the method to build instead, implemented here.

After each optimiser step, for the batch's unknown cells, with p = sigmoid(s) of the step's detached logits:

    v ← μ·v + η·(p − ŷ)
    ŷ ← clip(ŷ + v, 0, 1)

The velocity v (a float32 table, zero at the start) lets a label keep moving across the plateaus where the
network is still unsure, early in training. v is kept as the rule writes it when the clip binds (a label
pushed into 0 or 1 stays there until the pull toward p has cancelled its velocity). Observed cells never
change. A row is updated when its batch comes, i.e. once per epoch, so η and μ are per-visit quantities.

Ablations of the seed paper's Table II (switches, presets `plmcl-no-momentum`, `plmcl-no-velocity`):

- **without momentum**: μ = 0. Then v = η·(p − ŷ) each visit: a plain, rate-limited step toward p with no
  memory of earlier steps.
- **without velocity**: `velocity = false`: the label has no motion of its own at all — no velocity table,
  and ŷ ← p (the network's detached prediction, in [0, 1]) after each step; μ and η are not used. The literal
  alternative "ŷ ← clip(ŷ + η·(p − ŷ)) with no velocity table" is the μ = 0 ablation exactly (with μ = 0 the
  table carries nothing from one visit to the next), so it could not be a second ablation. Setting the label
  to the prediction is the update with neither inertia nor a finite rate (μ = 0, η = 1 of the same law):
  "without momentum" removes the inertia but keeps gradual motion; "without velocity" removes the motion.

The network player is `soft-bce` with the confidence-aware weights of `soft_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.families import HYPERPARAMETER_FAMILIES
from mlpl.stages.train.labelstate import LabelStateContext, RowTable, register_label_state
from mlpl.stages.train.labelstate.soft_labels import STORAGE_DTYPE, SoftLabelCfg, SoftLabelState, initial_labels
from mlpl.stages.train.losses import EpochState, LossOutput


@dataclass(frozen=True, kw_only=True)
class PlmclCfg(SoftLabelCfg):
    """Hyperparameters of PLMCL.

    Attributes:
        momentum: μ, the velocity's carry-over per visit (0 = the "without momentum" ablation).
        step: η, the pull of the label toward the prediction per visit.
        velocity: False = the "without velocity" ablation (ŷ ← p; `momentum` and `step` unused).
    """

    momentum: float
    step: float
    velocity: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.step <= 1.0:
            raise InputError(f"step must be in (0, 1] (a larger pull overshoots the prediction), got {self.step}")


def momentum_update(labels: torch.Tensor, velocity: torch.Tensor, probs: torch.Tensor, momentum: float,
                    step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One heavy-ball step of every given cell: (ŷ', v') with v' = μ·v + η·(p − ŷ), ŷ' = clip(ŷ + v', 0, 1)."""
    velocity = momentum * velocity + step * (probs - labels)
    return torch.clamp(labels + velocity, 0.0, 1.0), velocity


class PlmclState(SoftLabelState):
    """Tables `labels` (ŷ) and, unless `velocity = false`, `velocity` (v); both float32 [N, C]."""

    name = "plmcl"

    def __init__(self, ctx: LabelStateContext, cfg: PlmclCfg) -> None:
        super().__init__(ctx, cfg)
        self.tables["labels"] = RowTable(initial_labels(ctx, cfg, self.name), dtype=STORAGE_DTYPE)
        if cfg.velocity:
            self.tables["velocity"] = RowTable(torch.zeros(self.observed.shape), dtype=STORAGE_DTYPE)

    def soft_labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tables["labels"][rows]

    def after_step(self, *, rows: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, out: LossOutput,
                   epoch: EpochState) -> None:
        self.track_epoch(epoch)
        unknown = self.unknown_mask(observed)
        probs = self.probabilities(logits)
        labels = self.tables["labels"][rows]
        if self.cfg.velocity:
            velocity = self.tables["velocity"][rows]
            new_labels, new_velocity = momentum_update(labels, velocity, probs, self.cfg.momentum, self.cfg.step)
            self.tables["velocity"][rows] = torch.where(unknown, new_velocity, velocity)
        else:
            new_labels = probs
        self.tables["labels"][rows] = torch.where(unknown, new_labels, labels)


# Neither docs/methods.md nor the project's sources give the paper's values; these are chosen for a label updated once
# per epoch over about 10 epochs. With p fixed, η = 0.1 alone closes the gap to p by 0.9 per visit (35% left
# after 10 visits); with μ = 0.5 the heavy-ball's gap shrinks like √μ ≈ 0.71 per visit (3% left), the
# acceleration the velocity is for. τ0 = 0.25: the first epoch trains only on cells at least 75% sure (with
# init = "half" that is none: the network starts on observed cells alone). The same values for every family,
# digits included (nothing tunes them per dataset).
_PLMCL_DEFAULTS = {"tau0": 0.25, "momentum": 0.5, "step": 0.1}


@register_label_state(
    name="plmcl",
    description="PLMCL: per-image soft labels moved toward the network by heavy-ball momentum; "
                "confidence-aware easy-to-hard weights",
    reference="Abdelfattah et al., PLMCL, ECCV-W 2022; docs/methods.md §5",
    cfg_cls=PlmclCfg,
    dataset_defaults={name: dict(_PLMCL_DEFAULTS) for name in HYPERPARAMETER_FAMILIES},
    uses_sims=lambda cfg: cfg.init == "teacher",
)
def create_plmcl(ctx: LabelStateContext, cfg: PlmclCfg) -> PlmclState:
    return PlmclState(ctx, cfg)


