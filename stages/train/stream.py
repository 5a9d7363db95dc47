"""Stream a prepared dataset's WebDataset shards joined with labels, observations and the store's similarities.

Training samples carry `image`, `row`, full labels, observed labels and — when a store is given — the
teacher's cached similarities [V, C] of the epoch's augment seed (e mod S). The store is read one whole
chunk (= one shard) at a time in the worker that reads the shard, before shuffling, so no sample ever
triggers its own store read. Every pipeline step is a module-level picklable callable.

Epochs are exact: each training row is seen once per epoch. Under torchrun, rows are dealt to ranks by
a seeded per-epoch permutation (reading every shard on every rank, decoding only owned rows), and each
rank yields the same number of samples (short ranks repeat their first sample), hence equal batches.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas.dataset import PreparedDataset
from mlpl.schemas.errors import InputError
from mlpl.stages.runtime import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamCfg:
    """How images are read and transformed (docs/methods.md §1.5)."""

    image_size: int = 448
    batch_size: int = 8
    workers: int = 2
    shuffle_buffer: int = 1000
    flip: bool = True


def every_shard(src: Iterator[Any]) -> Iterator[Any]:
    """Node splitter that keeps all shards (ranks are split per sample, see module docstring)."""
    yield from src


class JoinRows:
    """Add full labels, observed labels and (optionally) store similarities to each raw sample.

    Keeps one store chunk in memory: samples of a shard are contiguous rows of one chunk, so the
    chunk is read once, whole, when the first of its rows arrives.
    """

    def __init__(
        self,
        full: np.ndarray,
        observed: np.ndarray | None,
        first_row: int,
        store_path: str | None,
        seed_index: int,
        rows_per_chunk: int,
    ) -> None:
        self.full, self.observed, self.first_row = full, observed, first_row
        self.store_path, self.seed_index, self.rows_per_chunk = store_path, seed_index, rows_per_chunk
        self._chunk: tuple[int, np.ndarray] | None = None
        self._sims: Any = None

    def _sims_of(self, row: int) -> np.ndarray:
        chunk = row // self.rows_per_chunk
        if self._chunk is None or self._chunk[0] != chunk:
            if self._sims is None:
                import zarr

                self._sims = zarr.open_group(self.store_path, mode="r")["sims"]
            start = chunk * self.rows_per_chunk
            stop = min(start + self.rows_per_chunk, self._sims.shape[1])
            self._chunk = (chunk, np.asarray(self._sims[self.seed_index, start:stop]))
        return self._chunk[1][row - chunk * self.rows_per_chunk]

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in src:
            row = int(sample["row"])
            i = row - self.first_row
            ext = "jpg" if "jpg" in sample else "png" if "png" in sample else None
            if ext is None:
                log.warning("shard %s: sample %s has no jpg/png member; skipped", sample.get("__url__"), row)
                continue
            out = {"row": row, "bytes": sample[ext], "full": self.full[i]}
            if self.observed is not None:
                out["observed"] = self.observed[i]
            if self.store_path is not None:
                out["sims"] = self._sims_of(row)
            yield out


class OwnedByRank:
    """Keep the rows dealt to this rank for this epoch (all rows when world == 1)."""

    def __init__(self, owner: np.ndarray | None, rank: int, first_row: int) -> None:
        self.owner, self.rank, self.first_row = owner, rank, first_row

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in src:
            if self.owner is None or self.owner[int(sample["row"]) - self.first_row] == self.rank:
                yield sample


class DecodeImage:
    """Decode, resize (plain, no aspect preservation), flip with a per-row seeded coin, normalise."""

    def __init__(self, image_size: int, flip: bool, seed: int) -> None:
        self.image_size, self.flip, self.seed = image_size, flip, seed
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from mlpl.schemas.images import DECODE_ERRORS, decode_rgb
        from PIL import Image

        for sample in src:
            try:
                im = decode_rgb(sample.pop("bytes")).resize((self.image_size, self.image_size), Image.BILINEAR)
                arr = np.array(im, dtype=np.uint8)
            except DECODE_ERRORS as e:  # a corrupt image is skipped and counted, never fatal
                log.warning("row %d: image could not be decoded (%s); skipped", sample["row"], e)
                continue
            if self.flip and np.random.default_rng([self.seed, sample["row"]]).random() < 0.5:
                arr = arr[:, ::-1]
            img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
            sample["image"] = (img - self.mean) / self.std
            yield sample


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out = {
        "image": torch.stack([s["image"] for s in samples]),
        "row": torch.tensor([s["row"] for s in samples], dtype=torch.long),
        "full": torch.from_numpy(np.stack([s["full"] for s in samples])),
    }
    if "observed" in samples[0]:
        out["observed"] = torch.from_numpy(np.stack([s["observed"] for s in samples]))
    if "sims" in samples[0]:
        out["sims"] = torch.from_numpy(np.stack([s["sims"] for s in samples]).astype(np.float32))
    return out


def _make_pipeline(
    urls: list[str], join: JoinRows, owned: OwnedByRank, decode: DecodeImage, shuffle: int, seed: int
):
    import webdataset as wds

    ds = wds.WebDataset(
        urls, shardshuffle=False, nodesplitter=every_shard, workersplitter=wds.split_by_worker, empty_check=False
    )
    ds = ds.map(_decode_raw).compose(join).compose(owned)
    if shuffle > 1:
        # seeded per epoch and worker-independent: the buffer's order is a function of the seed
        ds = ds.shuffle(shuffle, rng=random.Random(seed))
    return ds.compose(decode)


def _decode_raw(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v.decode()) if k == "row" else v) for k, v in sample.items()}


class EpochLoader:
    """An iterable over one epoch's batches (collated dicts), exact and equal across ranks.

    Workers collate their own batches (one inter-process transfer per batch, not per sample); the main
    process re-cuts them into exactly ceil(num_samples / batch_size) batches, padding a short rank with
    its first sample (at most one), so every rank takes the same number of steps.
    """

    def __init__(self, pipeline: Any, workers: int, batch_size: int, num_samples: int, drop_last: bool) -> None:
        self.pipeline, self.workers, self.batch_size = pipeline, workers, batch_size
        self.num_samples, self.drop_last = num_samples, drop_last

    def __len__(self) -> int:
        n = self.num_samples / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def _parts(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = self.pipeline.batched(self.batch_size, collation_fn=collate, partial=True)
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=self.workers, persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )
        count, first = 0, None
        for part in loader:
            take = min(len(part["row"]), self.num_samples - count)
            if take <= 0:
                break
            if take < len(part["row"]):
                part = {k: v[:take] for k, v in part.items()}
            if first is None:
                first = {k: v[:1] for k, v in part.items()}
            count += take
            yield part
        while first is not None and count < self.num_samples:  # pad a short rank
            count += 1
            yield first

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        size = self.batch_size
        pending: list[dict[str, torch.Tensor]] = []
        n_pending = 0
        for part in self._parts():
            if not pending and len(part["row"]) == size:  # the common case: a worker's full batch
                yield part
                continue
            pending.append(part)
            n_pending += len(part["row"])
            while n_pending >= size:
                merged = {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
                yield {k: v[:size] for k, v in merged.items()}
                rest = {k: v[size:] for k, v in merged.items()}
                n_pending -= size
                pending = [rest] if n_pending else []
        if n_pending and not self.drop_last:
            yield {k: torch.cat([p[k] for p in pending]) for k in pending[0]}


def train_loader(
    ds: PreparedDataset,
    observed: np.ndarray,
    cfg: StreamCfg,
    *,
    epoch: int,
    seed: int,
    store_path: Path | None = None,
    store_seed_index: int = 0,
    rows_per_chunk: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> EpochLoader:
    """Batches of the train split for one epoch (0-based `epoch` seeds the shuffle and flips)."""
    start, stop = ds.meta.split_range("train")
    n = stop - start
    if observed.shape != (n, ds.meta.num_classes):
        raise InputError(f"observed labels of shape {observed.shape}, expected {(n, ds.meta.num_classes)}")
    # rows with unknown full labels (a user's own data) carry zeros; the trainer measures nothing on them
    full = ds.labels.matrix(np.arange(start, stop), unknown_as_empty=True)
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    owner = None
    num = n
    if world > 1:
        owner = np.random.RandomState(epoch_seed).permutation(n) % world
        num = math.ceil(n / world)
    join = JoinRows(full, observed, start, str(store_path) if store_path else None, store_seed_index,
                    rows_per_chunk or ds.meta.rows_per_shard)
    decode = DecodeImage(cfg.image_size, cfg.flip, epoch_seed)
    urls = [str(p) for p in ds.shard_paths("train")]
    pipe = _make_pipeline(urls, join, OwnedByRank(owner, rank, start), decode, cfg.shuffle_buffer, epoch_seed)
    return EpochLoader(pipe, min(cfg.workers, len(urls)), cfg.batch_size, num, drop_last=False)


def eval_loader(ds: PreparedDataset, split: str, cfg: StreamCfg) -> EpochLoader:
    """Batches of a val/test split in row order, no flip, no store."""
    start, stop = ds.meta.split_range(split)
    full = ds.labels.matrix(np.arange(start, stop))
    join = JoinRows(full, None, start, None, 0, ds.meta.rows_per_shard)
    decode = DecodeImage(cfg.image_size, False, 0)
    urls = [str(p) for p in ds.shard_paths(split)]
    pipe = _make_pipeline(urls, join, OwnedByRank(None, 0, start), decode, 0, 0)
    # one worker keeps row order; evaluation reorders by row anyway
    return EpochLoader(pipe, min(cfg.workers, len(urls)), cfg.batch_size, stop - start, drop_last=False)
