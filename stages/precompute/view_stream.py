"""Stage one's input: DataLoader workers read whole train shards with WebDataset and cut every image's views.

Views are cut from the libjpeg-turbo-decoded image with torch's uint8 kernels (`mlpl.stages.pixels`).
Workers hand over uint8 batches of whole images (all V views of an image together); a batch never
mixes tasks and always holds the same rows whatever the rank or worker count, so the numbers do not
depend on how the work was split. Rows whose image cannot be read come with ok = False.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds  # imported here, so that DataLoader workers inherit it instead of importing it
from mlpl.schemas.shards import ShardCheck, raise_shard_error
from mlpl.stages.pixels import decode_uint8
from mlpl.stages.precompute.tasks import Task
from mlpl.stages.precompute.views import ViewCfg, make_views

log = logging.getLogger(__name__)


def _image_bytes(sample: dict[str, Any]) -> bytes | None:
    for ext in ("png", "jpg", "jpeg"):
        if ext in sample:
            return sample[ext]
    return None


class ViewStream(torch.utils.data.IterableDataset):
    """Batches of views, task by task: (task index, rows int64 [b], views uint8 [b, V, S, S, 3], ok bool [b], last,
    buffer slot).

    Each DataLoader worker takes whole tasks (tasks[worker::workers]) and reads its shard with
    WebDataset; a batch never mixes tasks and its rows depend only on the task and `batch_images`.
    Rows whose image cannot be read (or that are missing from the shard) come with ok = False (their
    views are left as they are: whatever the buffer held).

    Views are cut straight into shared-memory batch buffers that each worker allocates once and reuses:
    a buffer is written again only after the main process has `release`d its slot (a fresh buffer, never
    reused, when every slot is still in use). A new shared-memory batch per batch cost more than cutting
    its views (page faults of a fresh mapping, benchmarks/RESULTS.md).

    Args:
        tasks: the tasks to read, in order.
        views: view settings.
        batch_images: images per batch.
        workers: the DataLoader's worker count (0: the main process reads).
        slots: reusable buffers per worker (the DataLoader's prefetch depth plus the batch in use).
    """

    def __init__(self, tasks: list[Task], views: ViewCfg, batch_images: int, workers: int = 0,
                 slots: int = 6) -> None:
        super().__init__()
        self.tasks, self.views, self.batch_images, self.slots = tasks, views, batch_images, slots
        # made before the workers start, so that they and the main process share it
        self.released = torch.ones((max(workers, 1), slots), dtype=torch.uint8).share_memory_()
        self._buffers: dict[int, torch.Tensor] = {}

    def release(self, slot: int) -> None:
        """The main process is done with the batch of `slot`: its worker may write the buffer again."""
        if slot >= 0:
            self.released.view(-1)[slot] = 1

    def _buffer(self, rows: int) -> tuple[torch.Tensor, int]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        # a private copy: the main process may release a slot while this worker looks, and torch.nonzero's
        # count-then-fill passes must see one state
        free = torch.nonzero(self.released[worker].clone()).flatten()
        v, s = self.views.num_views, self.views.image_size
        if len(free) == 0:
            log.debug("worker %d: all %d batch buffers in use; one more allocated", worker, self.slots)
            return _shared_empty((rows, v, s, s, 3), info is not None), -1
        j = int(free[0])
        self.released[worker, j] = 0
        if j not in self._buffers:
            self._buffers[j] = _shared_empty((self.batch_images, v, s, s, 3), info is not None)
        return self._buffers[j][:rows], worker * self.slots + j

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        info = torch.utils.data.get_worker_info()
        tasks = self.tasks if info is None else self.tasks[info.id :: info.num_workers]
        for task in tasks:
            yield from self._task_batches(task)

    def _samples(self, task: Task) -> Iterator[tuple[int, bytes | None]]:
        """(row, encoded image) of every sample of the task's shard, in shard order, each checked against the
        shard contract (a missing, short or altered shard is an error naming it, see schemas/shards.py)."""
        stream = wds.WebDataset(
            [task.shard], shardshuffle=False, nodesplitter=None, workersplitter=None,
            handler=raise_shard_error, empty_check=False,
        )
        for sample in ShardCheck({task.shard: (task.first_row, task.num_rows)})(iter(stream)):
            yield int(sample["__key__"]), _image_bytes(sample)

    def _batch(self, task: Task, rows: list[int], images: list[bytes | None], last: bool) -> tuple:
        """Decode and cut the views of `rows` straight into a shared-memory batch buffer."""
        from mlpl.schemas.images import DECODE_ERRORS

        batch, slot = self._buffer(len(rows))
        ok = np.zeros(len(rows), dtype=bool)
        for i, (row, data) in enumerate(zip(rows, images)):
            if data is None:
                continue
            try:
                make_views(decode_uint8(data), task.seed, row, self.views, out=batch[i])
                ok[i] = True
            except DECODE_ERRORS as e:
                log.warning("%s: row %d: image cannot be decoded (%s: %s); skipped, its similarities stay NaN",
                            task.shard, row, e.__class__.__name__, e)
        return task.index, torch.tensor(rows, dtype=torch.int64), batch, torch.from_numpy(ok), last, slot

    def _task_batches(self, task: Task) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        seen: set[int] = set()
        rows: list[int] = []
        images: list[bytes | None] = []
        for row, data in self._samples(task):
            if row in seen:
                continue
            seen.add(row)
            rows.append(row)
            images.append(data)
            if len(rows) == self.batch_images:
                yield self._batch(task, rows, images, False)
                rows, images = [], []
        missing = sorted(set(range(task.first_row, task.first_row + task.num_rows)) - seen)
        for row in missing:
            log.warning("%s: row %d is missing from the shard; its similarities stay NaN", task.shard, row)
        yield self._batch(task, rows + missing, images + [None] * len(missing), True)


def _shared_empty(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when made in a worker (handing it over copies nothing)."""
    out = torch.empty(shape, dtype=torch.uint8)
    return out.share_memory_() if shared else out
