"""Per-image soft labels shared by PLMCL and G2NetPL: the label table, its initialisation and the confidence-aware
easy-to-hard scheduler (docs/methods.md §5).

Papers: Abdelfattah et al., "PLMCL: Partial-Label Momentum Curriculum Learning for Multi-Label Image
Classification", ECCV-W 2022; Abdelfattah et al., "G2NetPL: Generic Game-Theoretic Network for Partial-Label
Image Classification", BMVC 2022. The network player of both is the `soft-bce` loss
(`stages/train/losses/soft_target.py`), which reads `target` (ŷ) and `weight` from `batch_state`.

**Soft labels.** Every training cell has a soft label ŷ ∈ [0, 1]. Observed cells hold their observed value
(1 or 0) and are never updated (the loss reads the observed label there anyway); unknown cells start at 0.5
(`init = "half"`) or at the teacher's global-view score softmax_c(cos/τ_T) (`init = "teacher"`, τ_T =
`teacher_tau`, 0.01 as VLPL, docs/methods.md §4.4), clipped to [1e-3, 1 − 1e-3] so that no label starts exactly
saturated (G2NetPL's logit would be infinite, its gradient ŷ(1−ŷ) zero for good). A row whose similarities are
unreadable (NaN) starts at 0.5.

**Teacher initialisation and the store.** Both states read the store only with `init = "teacher"`
(`LabelStateInfo.uses_sims` is a function of the config), so a run of the presets (`init = "half"`) needs no
store, and one with `init = "teacher"` and no `--pseudo-store` fails before training, naming the option.

**Storage precision.** Every table here is float32. The tables are where small increments accumulate:
PLMCL adds v (steps of η·(p − ŷ) and their momentum, 1e-3 and smaller once a label has nearly converged) to
ŷ, and G2NetPL adds steps of α·ŷ(1−ŷ)·(…) to z, which shrink like e^(−|z|) as a label saturates. float16
has a spacing of 2^-11 ≈ 4.9e-4 on [0.5, 1) (2^-12 on [0.25, 0.5)), so an increment under 2.4e-4 is
rounded away entirely and one of 1e-3 is rounded by up to 25%: labels near 1 — exactly where late updates
are small — would stall before they converge, and a label could never creep upward by repeated tiny steps.
float16 is safe only for values written once and read back (a frozen initialisation, a flag); neither state
keeps such a table, so nothing is stored in float16. Memory for NUS-WIDE's pool of 150,000 images × 81
classes: 150,000 · 81 · 4 B = 48.6 MB per table — PLMCL keeps two (ŷ and v, 97.2 MB; 48.6 MB without
velocity), G2NetPL one (z, 48.6 MB); its 120,000 training rows after the validation hold-out take 38.9 MB
per table.

**Scheduler.** Epoch e of T (1-based) has threshold

    τ(e) = τ0 · (1 − t),   t = (e − 1)/(T − 1)   (t = 1 when T = 1)

so the first epoch uses τ0, the last uses 0 (every unknown cell counts), linearly in between, constant within
an epoch. The weight of an unknown cell is `hard`: 1[|ŷ − 0.5| ≥ τ]; `smooth`: min(1, |ŷ − 0.5| / τ) (1 when
τ = 0: the ramp reaches the hard weight exactly where the hard mask turns on); `off`: 1 (the "without
scheduler" ablation). The weights use the labels as they are at the start of the step.

`batch_state` has no epoch argument, so the state keeps the current epoch itself: the loop's `EpochState`
from `after_step`, advanced by `end_epoch`, saved with the tables so a resumed run continues the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.train.labelstate import LabelState, LabelStateContext
from mlpl.stages.train.losses import EpochState
from mlpl.stages.train.pseudolabels import readable_sims

STORAGE_DTYPE = torch.float32
"""The dtype of every soft-label table (see the module docstring for why not float16)."""

TEACHER_CLIP = 1e-3
"""A teacher-initialised label lies in [TEACHER_CLIP, 1 − TEACHER_CLIP]."""

HALF = 0.5


@dataclass(frozen=True, kw_only=True)
class SoftLabelCfg:
    """What PLMCL and G2NetPL share.

    Attributes:
        tau0: the scheduler's first-epoch threshold on |ŷ − 0.5| (in [0, 0.5]; 0 weights every cell at once).
        scheduler: `hard` (1[|ŷ − 0.5| ≥ τ]), `smooth` (min(1, |ŷ − 0.5|/τ)) or `off` (weight 1).
        init: unknown cells start at 0.5 (`half`) or at the teacher's global-view softmax (`teacher`).
        teacher_tau: softmax temperature over classes for `init = "teacher"` (VLPL's 0.01).
    """

    tau0: float
    scheduler: Literal["hard", "smooth", "off"] = "hard"
    init: Literal["half", "teacher"] = "half"
    teacher_tau: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau0 <= HALF:
            raise InputError(f"tau0 must be in [0, 0.5] (a threshold on |ŷ − 0.5|), got {self.tau0}")
        if self.teacher_tau <= 0:
            raise InputError(f"teacher_tau must be > 0, got {self.teacher_tau}")


def confidence_threshold(epoch: int, num_epochs: int, tau0: float) -> float:
    """τ(e) = τ0·(1 − (e − 1)/(T − 1)): τ0 in the first epoch, 0 in the last (0 throughout when T = 1)."""
    if num_epochs < 1 or not 1 <= epoch <= num_epochs:
        raise ValueError(f"confidence_threshold needs 1 <= epoch <= num_epochs, got {epoch}/{num_epochs}")
    progress = 1.0 if num_epochs == 1 else (epoch - 1) / (num_epochs - 1)
    return tau0 * (1.0 - progress)


def confidence_weight(labels: torch.Tensor, threshold: float, scheduler: str) -> torch.Tensor:
    """The curriculum weight of each cell from its soft label (see the module docstring)."""
    distance = (labels - HALF).abs()
    if scheduler == "off" or threshold <= 0:
        return torch.ones_like(labels)
    if scheduler == "hard":
        return (distance >= threshold).to(labels.dtype)
    if scheduler == "smooth":
        return torch.clamp(distance / threshold, max=1.0)
    raise ValueError(f"unknown scheduler {scheduler!r}; expected hard, smooth or off")


def teacher_scores(ctx: LabelStateContext, tau: float, name: str) -> np.ndarray:
    """softmax_c(cos/τ) of every training row's global view (augment seed 0) [N, C]; 0.5 for unreadable rows.

    Raises:
        InputError: the run has no store open.
    """
    if ctx.read_sims is None:
        raise InputError(
            f"label state {name!r}: init = 'teacher' reads the store's global-view similarities, but this run has "
            "no store open; pass --pseudo-store STORE, or set init = 'half'")
    scores = np.full((ctx.num_rows, ctx.num_classes), HALF, dtype=np.float32)
    for rows, sims in ctx.read_sims(0):
        work, unreadable = readable_sims(torch.as_tensor(sims))
        soft = torch.softmax(work[:, 0] / tau, dim=-1)
        soft[unreadable] = HALF
        scores[np.asarray(rows)] = soft.float().numpy()
    return scores


def initial_labels(ctx: LabelStateContext, cfg: SoftLabelCfg, name: str) -> np.ndarray:
    """ŷ at the start [N, C] float32: observed cells 1/0, unknown cells 0.5 or the clipped teacher score."""
    observed = ctx.observed
    if cfg.init == "teacher":
        unknown = np.clip(teacher_scores(ctx, cfg.teacher_tau, name), TEACHER_CLIP, 1.0 - TEACHER_CLIP)
    else:
        unknown = np.full(observed.shape, HALF, dtype=np.float32)
    labels = np.where(observed == Observed.POSITIVE, 1.0, np.where(observed == Observed.NEGATIVE, 0.0, unknown))
    return labels.astype(np.float32)


class SoftLabelState(LabelState):
    """Base of the per-image soft-label states: the curriculum weights, the epoch counter, reports.

    A subclass stores its tables and implements `soft_labels(rows)` (ŷ for rows, observed cells 1/0).
    """

    name = "soft-labels"

    def __init__(self, ctx: LabelStateContext, cfg: SoftLabelCfg) -> None:
        super().__init__(ctx, cfg)
        self.observed = torch.as_tensor(ctx.observed)
        self.epoch = 1

    # ---------------------------------------------------------------- what subclasses provide
    def soft_labels(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """ŷ [B, C] float32 of `rows` (observed cells hold their observed value)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared hooks
    def threshold(self) -> float:
        """τ of the current epoch."""
        return confidence_threshold(self.epoch, self.ctx.num_epochs, self.cfg.tau0)

    def batch_state(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        labels = self.soft_labels(rows)
        weight = confidence_weight(labels, self.threshold(), self.cfg.scheduler)
        return {"target": labels.to(device), "weight": weight.to(device)}

    def track_epoch(self, epoch: EpochState) -> None:
        """Follow the loop's epoch (called from `after_step`)."""
        self.epoch = epoch.epoch

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        threshold = confidence_threshold(epoch.epoch, epoch.num_epochs, self.cfg.tau0)
        self.epoch = min(epoch.epoch + 1, epoch.num_epochs)
        labels = self.soft_labels(torch.arange(self.ctx.num_rows))
        unknown = self.observed == Observed.UNKNOWN
        record = {"tau": threshold}
        if bool(unknown.any()):
            cells = labels[unknown]
            record["weighted"] = float(confidence_weight(cells, threshold, self.cfg.scheduler).mean())
            record["label_mean"] = float(cells.mean())
            record["confident"] = float(((cells - HALF).abs() >= 0.4).float().mean())  # ŷ ≤ 0.1 or ≥ 0.9
        return record

    def labels(self) -> np.ndarray:
        return self.soft_labels(torch.arange(self.ctx.num_rows)).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": torch.tensor(self.epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "epoch" not in state:
            raise ValueError(f"label state {self.name!r}: saved state lacks the scheduler's epoch")
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])

    # ---------------------------------------------------------------- helpers for subclasses
    def unknown_mask(self, observed: torch.Tensor) -> torch.Tensor:
        """[B, C] bool: cells whose label the state may change."""
        return observed.cpu() == Observed.UNKNOWN

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """p = sigmoid(s) on the CPU in float32, without gradient."""
        return torch.sigmoid(logits.detach().float()).cpu()
