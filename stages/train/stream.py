"""Stream a prepared dataset's WebDataset shards joined with labels, observations and the store's similarities.

Training samples carry `image`, `row`, full labels, observed labels and — when a store is given — the
teacher's cached similarities [V, C] of the epoch's augment seed (e mod S). The store is read one whole
chunk (= one shard) at a time in the worker that reads the shard, before shuffling, so no sample ever
triggers its own store read. Every pipeline step is a module-level picklable callable.

Epochs are exact: each training row is seen once per epoch. Under torchrun, rows are dealt to ranks by
a seeded per-epoch permutation (reading every shard on every rank, decoding only owned rows), and each
rank yields the same number of samples (short ranks repeat their first sample), hence equal batches.
Every shard member is checked as read (schemas/shards.py); a row whose image does not decode is dropped
and counted, in training and evaluation alike.
Inside a rank, DataLoader worker w of W reads the w-th of W equal contiguous row ranges of the split (from
the shards that hold it, stopping at its end), so every worker asked for works whatever the shard count.

Workers ship uint8 [B, 3, H, W] batches (decoded with libjpeg-turbo, resized with torch's uint8 kernels,
`mlpl.stages.pixels`) with each row's flip coin; `model_input` flips, converts and normalises them with the
backbone's mean/std on the training device (pinned batches when it is a GPU): a float image costs four
times the bytes and, on the CPU, more time than decoding it. With `StreamCfg.decode == 'device'` the workers
ship JPEG bytes instead, and the main process decodes and resizes them on the device (`decode_on_device`,
nvJPEG on a GPU, running ahead of the step in a thread).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas.dataset import PreparedDataset
from mlpl.schemas.errors import InputError
from mlpl.schemas.shards import ShardCheck, check_shards_exist, raise_shard_error
from mlpl.schemas.store import SeedChunks, open_store
from mlpl.stages.pixels import (
    decode_jpegs,
    decode_uint8,
    decoded_ahead,
    device_decodable,
    normalize_uint8,
    pack_bytes,
    resize_uint8,
    unpack_bytes,
)
from mlpl.stages.runtime import IMAGENET_MEAN, IMAGENET_STD
from mlpl.stages.train.datacfg import DataCfg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamCfg:
    """How images are read and transformed (docs/methods.md §1.5)."""

    image_size: int = 448
    batch_size: int = 8
    workers: int = 2
    shuffle_buffer: int = 1000
    flip: bool = True
    interpolation: str = "bilinear"
    # the model's input statistics, applied on the device by `model_input` (the backbone's)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pin_memory: bool = False  # page-locked batches, for an asynchronous copy to a GPU
    # 'workers': DataLoader workers decode and resize; 'device': they ship JPEG bytes, which the main process
    # decodes and resizes on the training device (nvJPEG on a GPU; other formats stay with the workers)
    decode: str = "workers"
    device: str = "cpu"  # where `decode == 'device'` decodes (the training device)

    def device_decoder(self) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
        """What turns a batch's JPEG bytes into images on the device (None: the workers decode)."""
        if self.decode != "device":
            return None
        return functools.partial(decode_on_device, device=torch.device(self.device), size=self.image_size,
                                 interpolation=self.interpolation)

    @classmethod
    def of(cls, data: DataCfg, **settings: Any) -> StreamCfg:
        """The stream for a backbone's input config: side, filter, mean and std all from `data` (their one source)."""
        return cls(image_size=data.image_size, interpolation=data.interpolation, mean=data.mean, std=data.std,
                   **settings)


class JoinRows:
    """Add full labels, observed labels and (optionally) store similarities to each raw sample.

    Keeps one store chunk in memory: samples of a shard are contiguous rows of one chunk, so the
    chunk is read once, whole, when the first of its rows arrives.
    """

    def __init__(self, full: np.ndarray, observed: np.ndarray | None, first_row: int,
                 sims: SeedChunks | None) -> None:
        self.full, self.observed, self.first_row, self.sims = full, observed, first_row, sims
        self.rows_per_chunk = sims.rows_per_chunk if sims is not None else 0
        self._chunk: tuple[int, np.ndarray] | None = None

    def _sims_of(self, row: int) -> np.ndarray:
        chunk = row // self.rows_per_chunk
        if self._chunk is None or self._chunk[0] != chunk:
            self._chunk = (chunk, self.sims.read(chunk))
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
            if self.sims is not None:
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
    """Decode and resize (plain, no aspect preservation) to uint8 [3, S, S]; draw the flip with a per-row coin."""

    def __init__(self, image_size: int, flip: bool, seed: int, interpolation: str = "bilinear",
                 on_device: bool = False) -> None:
        self.image_size, self.flip, self.seed, self.interpolation = image_size, flip, seed, interpolation
        self.on_device = on_device  # JPEGs travel as bytes, for `decode_on_device` in the main process

    def flip_of(self, row: int) -> bool:
        """The row's flip coin for this epoch (seeded by the epoch's seed and the row)."""
        return self.flip and bool(np.random.default_rng([self.seed, row]).random() < 0.5)

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from mlpl.schemas.images import DECODE_ERRORS

        for sample in src:
            if self.on_device and device_decodable(sample["bytes"]):
                sample["jpeg"] = sample.pop("bytes")
                sample["flip"] = self.flip_of(sample["row"])
                yield sample
                continue
            try:
                image = decode_uint8(sample.pop("bytes"))
            except DECODE_ERRORS as e:  # a corrupt image is skipped and counted (EpochLoader), never fatal
                log.warning("row %d: image could not be decoded (%s); skipped", sample["row"], e)
                side = self.image_size
                sample.update(image=torch.zeros((3, side, side), dtype=torch.uint8), flip=False, ok=False)
                yield sample
                continue
            sample["image"] = resize_uint8(image, self.image_size, self.interpolation)
            sample["flip"] = self.flip_of(sample["row"])
            yield sample


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One batch; images uint8 [B, 3, S, S] (channels-last), made in shared memory inside a worker. Rows
    whose JPEG travels undecoded (`DecodeImage(on_device=True)`) leave their image empty and add `jpeg` (the
    files end to end, one tensor), `jpeg_offsets` [n + 1] and `jpeg_index` [n] (their places in the batch)."""
    side = next((s["image"].shape[-1] for s in samples if "image" in s), None)
    jpegs = [i for i, s in enumerate(samples) if "jpeg" in s]
    shared = torch.utils.data.get_worker_info() is not None
    images = torch.zeros((len(samples), side, side, 3) if side else (len(samples), 1, 1, 3), dtype=torch.uint8)
    if shared:
        images.share_memory_()  # handing the batch to the main process then copies nothing
    for i, sample in enumerate(samples):
        if "image" in sample:
            images[i].copy_(sample["image"].permute(1, 2, 0))
    out = {
        "image": images.permute(0, 3, 1, 2),
        "flip": torch.tensor([s["flip"] for s in samples], dtype=torch.bool),
        "row": torch.tensor([s["row"] for s in samples], dtype=torch.long),
        "full": torch.from_numpy(np.stack([s["full"] for s in samples])),
        "ok": torch.tensor([s.get("ok", True) for s in samples], dtype=torch.bool),
    }
    if "observed" in samples[0]:
        out["observed"] = torch.from_numpy(np.stack([s["observed"] for s in samples]))
    if "sims" in samples[0]:
        out["sims"] = torch.from_numpy(np.stack([s["sims"] for s in samples]).astype(np.float32))
    if jpegs:
        out["jpeg"], out["jpeg_offsets"] = pack_bytes([samples[i]["jpeg"] for i in jpegs])
        out["jpeg_index"] = torch.tensor(jpegs, dtype=torch.long)
    return out


def decode_on_device(part: dict[str, torch.Tensor], device: torch.device, size: int,
                     interpolation: str) -> dict[str, torch.Tensor]:
    """A batch whose JPEGs travelled as bytes, with every image decoded: `image` on `device`, uint8
    [B, 3, size, size]; a JPEG that does not decode turns its row's `ok` off (dropped and counted, as in the
    workers)."""
    datas, index = unpack_bytes(part.pop("jpeg"), part.pop("jpeg_offsets")), part.pop("jpeg_index")
    images = part["image"]
    if images.shape[-1] != size:  # every row of the batch travelled as bytes
        images = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    images = images.to(device, non_blocking=True)
    ok = part["ok"].clone()
    for i, image in zip(index.tolist(), decode_jpegs(datas, device, size, interpolation)):
        if image is None:
            log.warning("row %d: image could not be decoded on %s; skipped", int(part["row"][i]), device)
            ok[i] = False
        else:
            images[i] = image
    return {**part, "image": images, "ok": ok}


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`; to a GPU through page-locked memory, so the copy does not make the host wait."""
    if device.type == "cuda" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def model_input(batch: dict[str, torch.Tensor], device: torch.device, mean: tuple[float, ...],
                std: tuple[float, ...]) -> torch.Tensor:
    """A batch's uint8 images as the model's float input on `device`: flipped where the row's coin said so,
    scaled to [0, 1] and normalised with the backbone's mean/std (docs/methods.md §1.5)."""
    flipped = torch.nonzero(batch["flip"]).flatten().to(device, non_blocking=True)
    return normalize_uint8(batch["image"].to(device, non_blocking=True), mean, std, flip=flipped)


@dataclass(frozen=True)
class ShardRows:
    """A shard of the split and the rows it holds, in order."""

    url: str
    first_row: int
    num_rows: int


class WorkerRows(torch.utils.data.IterableDataset):
    """The source of the pipeline: the samples of this worker's contiguous range of the split's rows.

    Worker w of W takes rows [start + n·w/W, start + n·(w+1)/W) (rounded down): every worker has work
    whatever the shard count, the ranges partition the split (exact epochs), and a worker reads only the
    shards its range touches, up to its last row (shards hold rows in order).
    """

    def __init__(self, shards: list[ShardRows]) -> None:
        super().__init__()
        self.shards = shards

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        start = self.shards[0].first_row if self.shards else 0
        n = sum(s.num_rows for s in self.shards)
        lo, hi = start + n * worker // workers, start + n * (worker + 1) // workers
        for shard in self.shards:
            if shard.first_row + shard.num_rows <= lo or shard.first_row >= hi:
                continue
            # every member checked against the shard contract as it is read (schemas/shards.py): a missing,
            # cut or altered shard is an error naming it, never an epoch silently trained on fewer rows
            samples = wds.tarfile_samples([{"url": shard.url}], handler=raise_shard_error)
            for sample in ShardCheck({shard.url: (shard.first_row, shard.num_rows)})(samples):
                sample = _decode_raw(sample)
                row = sample["row"]
                if row >= hi:
                    break
                if row >= lo:
                    yield sample


def _make_pipeline(
    shards: list[ShardRows], join: JoinRows, owned: OwnedByRank, decode: DecodeImage, shuffle: int, seed: int
):
    import webdataset as wds

    stages: list[Any] = [WorkerRows(shards), join, owned]
    if shuffle > 1:
        # seeded per epoch and worker-independent: the buffer's order is a function of the seed
        stages.append(wds.shuffle(shuffle, rng=random.Random(seed)))
    return wds.DataPipeline(*stages, decode)


def _shards(ds: PreparedDataset, split: str) -> list[ShardRows]:
    root = ds.root / "shards"
    shards = [ShardRows(str(root / s.name), s.first_row, s.num_samples) for s in ds.shards_of(split)]
    check_shards_exist(s.url for s in shards)
    return shards


def _decode_raw(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v.decode()) if k == "row" else v) for k, v in sample.items()}


class EpochLoader:
    """An iterable over one epoch's batches (collated dicts), exact and equal across ranks.

    Workers collate their own batches (one inter-process transfer per batch, not per sample); the main
    process re-cuts them into ceil(num_samples / batch_size) batches. Rows whose image does not decode
    are dropped and counted (`undecodable`); with `pad` (training under torchrun) a short rank repeats its
    first sample so every rank takes the same number of steps; evaluation never pads.
    """

    def __init__(self, pipeline: Any, workers: int, batch_size: int, num_samples: int, drop_last: bool,
                 pin_memory: bool = False, pad: bool = False,
                 decoder: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        self.pipeline, self.workers, self.batch_size, self.decoder = pipeline, workers, batch_size, decoder
        self.num_samples, self.drop_last, self.pin_memory, self.pad = num_samples, drop_last, pin_memory, pad
        self.undecodable = 0  # rows of the last pass whose image could not be decoded (skipped)

    def __len__(self) -> int:
        n = self.num_samples / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def _parts(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        batches = self.pipeline.compose(wds.batched(self.batch_size, collation_fn=collate, partial=True))
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=self.workers, persistent_workers=False,
            prefetch_factor=4 if self.workers else None, pin_memory=self.pin_memory,
        )
        count, yielded, first = 0, 0, None
        self.undecodable = 0
        parts = iter(loader) if self.decoder is None else decoded_ahead(loader, self.decoder)
        for part in parts:
            take = min(len(part["row"]), self.num_samples - count)
            if take <= 0:
                break
            if take < len(part["row"]):
                part = {k: v[:take] for k, v in part.items()}
            count += take
            ok = part.pop("ok")
            if not bool(ok.all()):  # undecodable rows are counted, never replaced by another sample
                self.undecodable += int((~ok).sum())
                part = {k: v[ok.to(v.device)] for k, v in part.items()}
                if not len(part["row"]):
                    continue
            if first is None:
                first = {k: v[:1] for k, v in part.items()}
            yielded += len(part["row"])
            yield part
        while self.pad and first is not None and yielded < self.num_samples:  # equal batches on every rank
            yielded += 1
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
    sims = open_store(Path(store_path)).seed_chunks(store_seed_index) if store_path else None
    join = JoinRows(full, observed, start, sims)
    decode = DecodeImage(cfg.image_size, cfg.flip, epoch_seed, cfg.interpolation, on_device=cfg.decode == "device")
    pipe = _make_pipeline(_shards(ds, "train"), join, OwnedByRank(owner, rank, start), decode, cfg.shuffle_buffer,
                          epoch_seed)
    return EpochLoader(pipe, cfg.workers, cfg.batch_size, num, drop_last=False, pin_memory=cfg.pin_memory,
                       pad=world > 1, decoder=cfg.device_decoder())


def eval_loader(ds: PreparedDataset, split: str, cfg: StreamCfg, rank: int = 0, world: int = 1) -> EpochLoader:
    """Batches of a split in row order, no flip, no store; under torchrun, rank r takes the rows i ≡ r (mod world)
    of the split, so the ranks together predict every row once."""
    start, stop = ds.meta.split_range(split)
    full = ds.labels.matrix(np.arange(start, stop))
    join = JoinRows(full, None, start, None)
    decode = DecodeImage(cfg.image_size, False, 0, cfg.interpolation, on_device=cfg.decode == "device")
    owner = np.arange(stop - start) % world if world > 1 else None
    num = len(range(rank, stop - start, world))
    pipe = _make_pipeline(_shards(ds, split), join, OwnedByRank(owner, rank, start), decode, 0, 0)
    # several workers interleave their row ranges; evaluation reorders by row
    return EpochLoader(pipe, cfg.workers, cfg.batch_size, num, drop_last=False, pin_memory=cfg.pin_memory,
                       decoder=cfg.device_decoder())
