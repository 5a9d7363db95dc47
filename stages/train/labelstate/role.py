"""Label state `role`: ROLE's learnable label estimator, a logit matrix g ∈ R^{N×C} (docs/methods.md §3.2).

Paper: Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021.

g is an `nn.Parameter` on the training device, trained by the run's Adam optimiser in its own parameter
group at lr·`lr_mult` (docs/methods.md §1.5: ROLE gives 10× only to its label estimator). It is a dense parameter, as
in the released code: Adam steps every row, so a row that has had a gradient keeps moving on Adam's momentum
after its batch. `batch_state` hands the loss sigmoid(g[rows]) *with* its gradient; the `role` loss trains g and the
network together.

Initialisation (docs/methods.md §3.2): unknown cells uniform in logit space on [−logit(0.6), logit(0.6)] (estimates
0.4..0.6), drawn from a CPU generator seeded with the run's seed (so the draw is the same on every device);
observed positives at logit(0.995), observed negatives at logit(0.005).

Under torchrun each rank's loss only reaches its own rows of g; the training loop sums g's gradient over the
ranks before the optimiser step (rows are disjoint across ranks), so every rank, and the state rank 0 saves,
holds the updates of every row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.families import HYPERPARAMETER_FAMILIES
from mlpl.stages.train.labelstate import (
    LabelState,
    LabelStateContext,
    register_label_state,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


UNKNOWN_INIT_BOUND = logit(0.6)  # released code: inverse_sigmoid(0.5 + 0.1)
POSITIVE_INIT = logit(0.995)
NEGATIVE_INIT = logit(0.005)


@dataclass(frozen=True, kw_only=True)
class RoleCfg:
    """Parameters of ROLE's label estimator.

    Attributes:
        lr_mult: the estimator's learning rate as a multiple of the network's base lr (the released code's
            `lr_mult`).
    """

    lr_mult: float = 10.0

    def __post_init__(self) -> None:
        if self.lr_mult <= 0:
            raise InputError(f"lr_mult must be > 0, got {self.lr_mult}")


def initial_logits(observed: np.ndarray, seed: int) -> torch.Tensor:
    """The estimator's starting logits [N, C] float32 for `observed` ([N, C] `Observed` values), methods §3.2."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(np.asarray(observed))
    init = UNKNOWN_INIT_BOUND * (2 * torch.rand(obs.shape, generator=generator, dtype=torch.float32) - 1)
    init[obs == Observed.POSITIVE] = POSITIVE_INIT
    init[obs == Observed.NEGATIVE] = NEGATIVE_INIT
    return init


@register_label_state(
    name="role",
    description="ROLE: a learnable per-image label estimator trained jointly with the network",
    reference="Cole et al., CVPR 2021; docs/methods.md §3.2",
    cfg_cls=RoleCfg,
    dataset_defaults={name: {"lr_mult": 10.0} for name in HYPERPARAMETER_FAMILIES},
)
class RoleState(LabelState):
    """The label estimator g (one row of logits per training image)."""

    def __init__(self, ctx: LabelStateContext, cfg: RoleCfg) -> None:
        super().__init__(ctx, cfg)
        self.logits = torch.nn.Parameter(initial_logits(ctx.observed, ctx.seed).to(ctx.device))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.logits], "lr": lr * self.cfg.lr_mult}]

    def batch_state(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """`estimate`: sigmoid(g[rows]) [B, C], differentiable with respect to g."""
        index = torch.as_tensor(rows, dtype=torch.long).to(self.logits.device)
        return {"estimate": torch.sigmoid(self.logits[index]).to(device)}

    def labels(self) -> np.ndarray:
        """The current estimates sigmoid(g) [N, C] float32."""
        return torch.sigmoid(self.logits.detach()).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "logits": self.logits.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "logits" not in state:
            raise ValueError("label state RoleState: saved state lacks the estimator's logits")
        saved = torch.as_tensor(state["logits"])
        if tuple(saved.shape) != tuple(self.logits.shape):
            raise ValueError(f"label state RoleState: saved logits {tuple(saved.shape)} != "
                             f"{tuple(self.logits.shape)} of this run")
        super().load_state_dict({k: v for k, v in state.items() if k != "logits"})
        with torch.no_grad():
            # in place: the optimiser holds this very Parameter
            self.logits.copy_(saved.to(self.logits.device, self.logits.dtype))

    def memory_bytes(self) -> int:
        return super().memory_bytes() + self.logits.numel() * self.logits.element_size()


