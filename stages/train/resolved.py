"""The typed configs a run trains with, resolved once before training starts and saved whole in `config.toml`.

`TrainCfg` holds what the user chose (method, loss name, `loss_params` overrides, ...); `resolve_parts` turns
it, with the dataset's family (and its recorded m), into the frozen configs of the loss, pseudo-labeller,
label state and head, and checks that the parts fit together. The run saves them under `[resolved]`, so a
run folder says every value it trained with, defaults included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mlpl.schemas.errors import InputError
from mlpl.stages.families import FamilyInfo, family_info
from mlpl.stages.train.config import TrainCfg
from mlpl.stages.train.labelstate import create_label_state_cfg, get_label_state_info
from mlpl.stages.train.losses import create_loss_cfg, get_loss_info
from mlpl.stages.train.models import HEADS, create_head_cfg, get_head_info
from mlpl.stages.train.optim import get_optimizer_info
from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS, create_pseudo_cfg

RESOLVED_KEY = "resolved"
"""The `config.toml` table holding the resolved configs (a reader of `TrainCfg` leaves it out)."""


@dataclass(frozen=True)
class ResolvedParts:
    """The family and the frozen configs of every part of a run.

    Attributes:
        family: the dataset's family, with the dataset's recorded m where it has one.
        loss: the loss's config (`create_loss_cfg`).
        pseudo: the pseudo-labeller's config.
        label_state: the label state's config.
        head: the head's config.
    """

    family: FamilyInfo
    loss: Any
    pseudo: Any
    label_state: Any
    head: Any

    def to_dict(self) -> dict[str, Any]:
        """Every resolved value, as `config.toml`'s `[resolved]` tables."""
        family = dataclasses.asdict(self.family)
        return {"family": {"name": family["name"], "expected_positives": family["expected_positives"]},
                **{part: dataclasses.asdict(getattr(self, part)) for part in ("loss", "pseudo", "label_state", "head")}}


def resolve_parts(cfg: TrainCfg, expected_positives: float | None = None) -> ResolvedParts:
    """The typed configs of `cfg`'s parts for a dataset of `cfg.family` (whose recorded m, if any, is given).

    Raises:
        InputError: an unknown part, a bad value, or parts that do not fit together (a loss that needs
            pseudo-labels without a pseudo-labeller, another label state, or head outputs the head lacks).
    """
    family = family_info(cfg.family, expected_positives)
    loss_info = get_loss_info(cfg.loss)
    PSEUDOLABELLERS.get(cfg.pseudo, option="--pseudo")
    get_label_state_info(cfg.label_state)
    if loss_info.needs_pseudo and cfg.pseudo == "none":
        raise InputError(f"--pseudo none: loss {cfg.loss!r} of method {cfg.method!r} needs pseudo-labels "
                         f"(choose one of {PSEUDOLABELLERS.names()})")
    if loss_info.label_states and cfg.label_state not in loss_info.label_states:
        raise InputError(f"label_state {cfg.label_state!r}: loss {cfg.loss!r} of method {cfg.method!r} reads "
                         f"a label state of {list(loss_info.label_states)}; set label_state to one")
    head_info = get_head_info(cfg.head)
    missing = [name for name in loss_info.head_outputs if name not in head_info.outputs]
    if missing:
        heads = [h.name for h in HEADS if set(loss_info.head_outputs) <= set(h.outputs)]
        raise InputError(f"--head {cfg.head}: loss {cfg.loss!r} of method {cfg.method!r} reads the head's "
                         f"outputs {missing}, which head {cfg.head!r} does not give; use --head {heads}")
    get_optimizer_info(cfg.optimizer)
    return ResolvedParts(
        family=family,
        loss=create_loss_cfg(cfg.loss, family, cfg.loss_params),
        pseudo=create_pseudo_cfg(cfg.pseudo, family, cfg.pseudo_params),
        label_state=create_label_state_cfg(cfg.label_state, family, cfg.label_state_params),
        head=create_head_cfg(cfg.head, family, cfg.head_params),
    )
