"""Per-row union of pseudo-labels across epochs: the "accumulated" DAMP variant (docs/methods.md §4.3) and its quality.

A cell once given the tracked value (by default a positive pseudo-label) stays marked for the rest of
training. The training loop combines it with the current epoch's labels as
`torch.where(acc.get(rows) == 1, 1, pseudo)` (accumulated positives win, current negatives stay).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlpl.schemas.labels import Pseudo


class AccumulatedPseudoLabels:
    """Which cells have ever held `value`, for `num_rows` rows (indexed by the dataset's `row`).

    Storage is one uint8 per cell on the CPU (COCO's 82k × 80 is 6.5 MB).

    Args:
        num_rows: rows of the training split's row space (`row` values must be < num_rows).
        num_classes: C.
        value: the pseudo-label value tracked (`Pseudo.POSITIVE` by default, `Pseudo.NEGATIVE` for the
            accumulated quality of negatives).
    """

    def __init__(self, num_rows: int, num_classes: int, value: int = Pseudo.POSITIVE) -> None:
        if value == Pseudo.UNDEFINED:
            raise ValueError("AccumulatedPseudoLabels tracks +1 or -1, not 0")
        self.num_rows = num_rows
        self.num_classes = num_classes
        self.value = int(value)
        self.seen = torch.zeros((num_rows, num_classes), dtype=torch.uint8)

    def _index(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(rows, dtype=torch.long).cpu().reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_rows):
            raise IndexError(f"rows must be in [0, {self.num_rows}), got range "
                             f"[{int(index.min())}, {int(index.max())}]")
        return index

    def update(self, rows: torch.Tensor | np.ndarray, pseudo: torch.Tensor | np.ndarray) -> None:
        """Mark the cells of `rows` where `pseudo` [len(rows), C] equals the tracked value."""
        index = self._index(rows)
        pseudo = torch.as_tensor(pseudo)
        if pseudo.shape != (index.numel(), self.num_classes):
            raise ValueError(f"pseudo must be [{index.numel()}, {self.num_classes}], got {tuple(pseudo.shape)}")
        hit = (pseudo.detach().cpu() == self.value).to(torch.uint8)
        # A row repeated within one call (padding of the last batch) must count every time: 'amax' takes the
        # union, where indexed assignment would keep only the last copy.
        self.seen.scatter_reduce_(0, index[:, None].expand_as(hit), hit, "amax", include_self=True)

    def get(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[len(rows), C] int8 (CPU): the tracked value where a cell has ever held it, else 0."""
        return self.seen[self._index(rows)].to(torch.int8) * self.value

    def synchronise(self) -> None:
        """Under torchrun, after an epoch: a cell marked on any rank is marked on every rank (a no-op otherwise)."""
        from mlpl.stages.collectives import union_over_ranks_

        union_over_ranks_(self.seen)

    def reset(self) -> None:
        """Forget everything (a new run)."""
        self.seen.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"num_rows": self.num_rows, "num_classes": self.num_classes, "value": self.value,
                "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = (self.num_rows, self.num_classes, self.value)
        found = (int(state["num_rows"]), int(state["num_classes"]), int(state["value"]))
        if found != expected:
            raise ValueError(f"accumulated pseudo-labels of (rows, classes, value) {found} cannot be loaded "
                             f"into {expected}")
        seen = torch.as_tensor(state["seen"])
        if seen.shape != self.seen.shape or seen.dtype != torch.uint8:
            raise ValueError(f"accumulated pseudo-labels: expected uint8 {tuple(self.seen.shape)}, "
                             f"got {seen.dtype} {tuple(seen.shape)}")
        self.seen.copy_(seen)
