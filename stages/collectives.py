"""Combining what the ranks of a torchrun run measured: summed counts, unions of per-row tables, gathered predictions.

Every helper is the identity in a single process. Under NCCL the collectives need device tensors, so values
travel to the rank's device for the collective and come back to the CPU.
"""

from __future__ import annotations

import numpy as np
import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `values` over ranks (a CPU copy; float64 sums stay exact for counts)."""
    if not is_distributed():
        return values.clone()
    summed = values.to(_collective_device()).clone()
    torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
    return summed.cpu()


def union_over_ranks_(table: torch.Tensor) -> None:
    """In place: the elementwise maximum over ranks of a 0/1 CPU table (a cell marked on any rank is marked)."""
    if not is_distributed():
        return
    merged = table.to(_collective_device(), torch.uint8 if table.dtype == torch.bool else table.dtype).clone()
    torch.distributed.all_reduce(merged, op=torch.distributed.ReduceOp.MAX)
    table.copy_(merged.cpu().to(table.dtype))


def gather_rows(rows: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's (rows, columns...) joined and ordered by row, each row once (each rank predicted a share)."""
    if not is_distributed():
        return (rows, *columns)
    parts: list[tuple[np.ndarray, ...] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (rows, *columns))
    joined = [np.concatenate([p[i] for p in parts if p is not None]) for i in range(1 + len(columns))]
    order_rows, first = np.unique(joined[0], return_index=True)
    return (order_rows, *(column[first] for column in joined[1:]))


def share_buffers_(model: torch.nn.Module) -> None:
    """In place: every rank's buffers (batch-norm running statistics) become rank 0's.

    Training under DistributedDataParallel leaves each rank with the statistics of its own last batches;
    the model that is evaluated and saved is rank 0's, so every rank must predict its share with those.
    """
    if not is_distributed():
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer.data, src=0)
