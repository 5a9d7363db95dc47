"""Stage one's input: DataLoader workers read whole train shards with WebDataset and cut every image's views.

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
from mlpl.stages.precompute.tasks import Task
from mlpl.stages.precompute.views import ViewCfg, make_views

log = logging.getLogger(__name__)


def _decode(data: bytes) -> Any:
    from mlpl.schemas.images import decode_rgb

    return decode_rgb(data)


def _image_bytes(sample: dict[str, Any]) -> bytes | None:
    for ext in ("png", "jpg", "jpeg"):
        if ext in sample:
            return sample[ext]
    return None


class ViewStream(torch.utils.data.IterableDataset):
    """Batches of views, task by task: (task index, rows int64 [b], views uint8 [b, V, S, S, 3], ok bool [b], last).

    Each DataLoader worker takes whole tasks (tasks[worker::workers]) and reads its shard with
    WebDataset; a batch never mixes tasks and its rows depend only on the task and `batch_images`.
    Rows whose image cannot be read (or that are missing from the shard) come with ok = False.

    Args:
        tasks: the tasks to read, in order.
        views: view settings.
        batch_images: images per batch.
    """

    def __init__(self, tasks: list[Task], views: ViewCfg, batch_images: int) -> None:
        super().__init__()
        self.tasks, self.views, self.batch_images = tasks, views, batch_images

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        info = torch.utils.data.get_worker_info()
        tasks = self.tasks if info is None else self.tasks[info.id :: info.num_workers]
        for task in tasks:
            yield from self._task_batches(task)

    def _samples(self, task: Task) -> Iterator[tuple[int, bytes | None]]:
        """(row, encoded image or None) of every sample of the task's shard, in shard order."""
        stream = wds.WebDataset(
            [task.shard], shardshuffle=False, nodesplitter=None, workersplitter=None,
            handler=wds.warn_and_continue, empty_check=False,
        )
        for sample in stream:
            key = sample.get("__key__", "")
            try:
                row = int(key)
            except ValueError:
                log.warning("%s: sample key %r is not a row number; skipped", task.shard, key)
                continue
            if not task.first_row <= row < task.first_row + task.num_rows:
                log.warning("%s: row %d is outside this shard's rows; skipped", task.shard, row)
                continue
            data = _image_bytes(sample)
            if data is None:
                members = sorted(k for k in sample if not k.startswith("__"))
                log.warning("%s: row %d has no png/jpg member (members: %s); its similarities stay NaN",
                            task.shard, row, members)
            yield row, data

    def _batch(self, task: Task, rows: list[int], images: list[bytes | None], last: bool) -> tuple:
        """Decode and cut the views of `rows` straight into one shared-memory batch tensor."""
        v, s = self.views.num_views, self.views.image_size
        batch = torch.zeros((len(rows), v, s, s, 3), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            batch.share_memory_()  # made in shared memory, so handing it to the main process copies nothing
        arr = batch.numpy()
        ok = np.zeros(len(rows), dtype=bool)
        for i, (row, data) in enumerate(zip(rows, images)):
            if data is None:
                continue
            try:
                make_views(_decode(data), task.seed, row, self.views, out=arr[i])
                ok[i] = True
            except Exception as e:  # PIL raises many types for corrupt data
                arr[i] = 0
                log.warning("%s: row %d: image cannot be decoded (%s: %s); skipped, its similarities stay NaN",
                            task.shard, row, e.__class__.__name__, e)
        return task.index, torch.tensor(rows, dtype=torch.int64), batch, torch.from_numpy(ok), last

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
