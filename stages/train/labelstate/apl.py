"""Label state `apl`: asymmetric pseudo-labelling's frozen soft negatives, read by the `em-apl` loss
(docs/methods.md §3.3).

Paper: Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels", ECCV 2022.

After each epoch e (1-based) with warm-up ≤ e < E, the network predicts every training image in eval mode;
for each class c, among the cells still unknown (not observed, not yet a soft negative), the
int(0.9·U_c / (E − warm-up)) lowest-scoring become soft negatives whose target is that prediction, frozen
from then on (U_c: unknown cells of class c at the start).

Epoch indexing, read from the released code (`train.py`): its 1-based epoch runs APL right after the
training phase when `epoch >= warmup_epoch`, so warm-up 5 first selects after the fifth epoch and the sixth
epoch is the first to train on soft negatives. The released code also selects after the last epoch, where
the new soft negatives can no longer change the network; this state skips that pass (a full prediction of
the training split for nothing). The selections that reach training are then the E − warm-up of e =
warm-up .. E − 1, which is what the quota's denominator counts: together they take 90% of each class's
unknown cells.

The soft-negative targets are stored in float16 (3 significant digits; below 6e-5, where the lowest scores
lie, to within 6e-8): in β·(p_old·nlog(p) + (1 − p_old)·nlog(1 − p)) that error is far below anything the
network's prediction can resolve, and a NUS-WIDE table takes 19 MB instead of 39.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.train.labelstate import (
    LabelState,
    LabelStateContext,
    RowTable,
    register_label_state,
)
from mlpl.stages.train.losses import EpochState


@dataclass(frozen=True, kw_only=True)
class AplCfg:
    """Parameters of APL (docs/methods.md §3.3).

    Attributes:
        warmup: first epoch (1-based) after which soft negatives are selected (per dataset).
        proportion: share of each class's unknown cells made soft negatives over the whole run (the released
            code's `neg_proportion`).
    """

    warmup: int
    proportion: float = 0.9

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise InputError(f"warmup must be >= 1 (epochs are 1-based), got {self.warmup}")
        if not 0.0 <= self.proportion <= 1.0:
            raise InputError(f"proportion must be in [0, 1], got {self.proportion}")


@register_label_state(
    name="apl",
    description="asymmetric pseudo-labelling: the lowest-scoring unknown labels become frozen soft negatives",
    reference="Zhou et al., ECCV 2022; docs/methods.md §3.3",
    cfg_cls=AplCfg,
    # digits: VOC's warm-up (half of its 10 epochs), as for EM's α and APL's β
    dataset_defaults={"voc": {"warmup": 5}, "coco": {"warmup": 5}, "nus": {"warmup": 4}, "cub": {"warmup": 3},
                      "digits": {"warmup": 5}},
)
class AplState(LabelState):
    """Soft negatives per training cell: a flag table and the frozen target p_old (float16)."""

    def __init__(self, ctx: LabelStateContext, cfg: AplCfg) -> None:
        super().__init__(ctx, cfg)
        shape = (ctx.num_rows, ctx.num_classes)
        self.unknown_at_start = (ctx.observed == Observed.UNKNOWN).sum(axis=0).astype(np.int64)
        self.tables = {
            "soft_negative": RowTable(np.zeros(shape, dtype=bool), dtype=torch.bool, sync="max"),
            "target": RowTable(np.zeros(shape, dtype=np.float32), dtype=torch.float16),
        }

    def quota(self, num_epochs: int) -> np.ndarray:
        """Soft negatives selected per class at each selection epoch: int(proportion·U_c / (E − warm-up))."""
        rounds = num_epochs - self.cfg.warmup
        if rounds <= 0:
            return np.zeros_like(self.unknown_at_start)
        return np.array([int(self.cfg.proportion * int(u) / rounds) for u in self.unknown_at_start], dtype=np.int64)

    def selects_after(self, epoch: EpochState) -> bool:
        """True after the epochs whose predictions choose new soft negatives: warm-up ≤ e < E."""
        return self.cfg.warmup <= epoch.epoch < epoch.num_epochs

    # The tables change only in `end_epoch`, never during an epoch, so there are no per-rank changes to combine;
    # `_share_selection` makes every rank hold rank 0's selection instead.
    def begin_epoch(self) -> None:
        pass

    def synchronise(self) -> None:
        pass

    def _share_selection(self) -> None:
        """Under torchrun, overwrite the tables with rank 0's (a no-op in a single process).

        Every rank predicts every training row with the same weights and so selects the same cells, unless
        kernels differ in the last bit at a tie; the broadcast rules that out. It runs on the training device,
        which is the one the process group's backend serves (nccl needs CUDA tensors).
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for table in self.tables.values():
            buffer = table.data.to(self.ctx.device, torch.float32)
            dist.broadcast(buffer, src=0)
            table.data.copy_(buffer.cpu().to(table.data.dtype))

    def batch_state(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "soft_negative": self.tables["soft_negative"][rows].to(device) > 0.5,
            "target": self.tables["target"][rows].to(device),
        }

    def wants_train_predictions(self, epoch: EpochState) -> bool:
        return self.selects_after(epoch)

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        """Make the lowest-scoring unknown cells of each class soft negatives (after a selection epoch).

        Under torchrun every rank receives the eval-mode predictions of every training row (evaluation is not
        split by rank) and selects from them; rank 0's selection is then broadcast to all.

        Args:
            epoch: the epoch just trained.
            rows: local training rows of `probs` (every training row), or None outside selection epochs.
            probs: [len(rows), C] eval-mode probabilities, or None.

        Returns:
            `soft_negatives_added` this epoch, `soft_negatives` in total, and `soft_negative_share`: the total
            over the cells unknown at the start.
        """
        flags = self.tables["soft_negative"]
        added = 0
        if self.selects_after(epoch):
            if rows is None or probs is None:
                raise ValueError("label state 'apl': end_epoch needs the training predictions after a selection "
                                 "epoch (wants_train_predictions was True)")
            rows = np.asarray(rows, dtype=np.int64)
            probs = np.asarray(probs, dtype=np.float32)
            candidates = (self.ctx.observed[rows] == Observed.UNKNOWN) & ~flags.data[rows].numpy()
            chosen = np.zeros_like(candidates)
            for c, k in enumerate(self.quota(epoch.num_epochs)):
                cells = np.flatnonzero(candidates[:, c])
                if k == 0 or cells.size == 0:
                    continue
                # stable: equal scores are taken in row order, so the choice is the same on every run and rank
                lowest = cells[np.argsort(probs[cells, c], kind="stable")[:k]]
                chosen[lowest, c] = True
            added = int(chosen.sum())
            if added:
                picked = torch.from_numpy(chosen)
                index = torch.from_numpy(rows)
                flags.data[index] |= picked
                target = self.tables["target"].data
                target[index] = torch.where(picked, torch.from_numpy(probs).to(target.dtype), target[index])
            self._share_selection()
        total = int(flags.data.sum())
        return {"soft_negatives_added": float(added), "soft_negatives": float(total),
                "soft_negative_share": total / max(int(self.unknown_at_start.sum()), 1)}

    def labels(self) -> np.ndarray:
        """[N, C] float32: 1 on observed positives, 0 on observed negatives, p_old on soft negatives, NaN on the
        cells that still have no label (EM's unknowns)."""
        out = np.full(self.tables["target"].shape, np.nan, dtype=np.float32)
        out[self.ctx.observed == Observed.POSITIVE] = 1.0
        out[self.ctx.observed == Observed.NEGATIVE] = 0.0
        soft = self.tables["soft_negative"].data.numpy()
        out[soft] = self.tables["target"].numpy()[soft]
        return out


