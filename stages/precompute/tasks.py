"""Stage one's units of work: one task is all rows of one train shard under one augment seed (= one store chunk).

Train shard k is store chunk k (schemas/store.py); `train_tasks` checks it and lists the tasks seed-major.
Rank r of a torchrun world takes tasks r::world.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlpl.schemas.dataset import PreparedDataset
from mlpl.schemas.errors import InputError


@dataclass(frozen=True)
class Task:
    """One unit of work: all rows of one train shard under one augment seed (= one store chunk)."""

    index: int
    seed_index: int
    seed: int
    chunk: int
    shard: str
    first_row: int
    num_rows: int


def train_tasks(dataset: PreparedDataset, seeds: tuple[int, ...]) -> list[Task]:
    """Tasks (seed index, train shard), seed-major; checks that train shard k is store chunk k."""
    rps = dataset.meta.rows_per_shard
    start, stop = dataset.meta.split_range("train")
    shards = dataset.shards_of("train")
    if stop <= start:
        raise InputError(f"{dataset.root}: the train split is empty; nothing to precompute")
    for k, shard in enumerate(shards):
        full = shard.num_samples == rps or k == len(shards) - 1
        if shard.first_row != start + k * rps or not full:
            raise InputError(
                f"{dataset.root}: train shard {shard.name} holds rows {shard.first_row}..+{shard.num_samples}; "
                f"expected {start + k * rps}..+{rps} (every train shard but the last full); prepare the dataset again"
            )
    if start != 0 or sum(s.num_samples for s in shards) != stop - start:
        raise InputError(f"{dataset.root}: train shards do not cover rows 0..{stop - 1}; prepare the dataset again")
    root = dataset.root / "shards"
    return [
        Task(s * len(shards) + k, s, seed, k, str(root / shard.name), shard.first_row, shard.num_samples)
        for s, seed in enumerate(seeds)
        for k, shard in enumerate(shards)
    ]
