"""Stage one's writer: the teacher over every view of every train image for every augment seed, into the store.

Work is split into tasks (seed index, train shard); one task fills one whole Zarr chunk of `sims`
(chunk k = train shard k, see schemas/store.py), then sets `done[s, k]`. Rank r of a torchrun world
takes tasks r::world; a rerun skips tasks already done, so a killed run resumes and ends
byte-identical to an uninterrupted one. Inside a process, DataLoader workers cut the views
(view_stream.py); the main process normalises, runs the teacher, and hands each finished chunk to one
writer thread (store_writer.py). Tasks are listed in tasks.py.

An image that cannot be decoded is skipped with a warning: its rows stay NaN, and the rows are listed
in the store attribute `corrupt_rows`, derived at the end of every run from the NaN rows of the
written chunks (so a resumed run lists them too). Stage two treats a NaN row as "no pseudo-label".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas.dataset import PreparedDataset, open_dataset
from mlpl.schemas.errors import InputError, check_range
from mlpl.schemas.shards import check_shards_exist
from mlpl.schemas.store import Store, StoreAttrs, open_store
from mlpl.stages.families import dataset_family
from mlpl.stages.precompute.store_writer import open_or_create_store, scan_corrupt_rows, write_task
from mlpl.stages.precompute.tasks import Task, train_tasks
from mlpl.stages.precompute.teacher import TeacherCfg
from mlpl.stages.precompute.text_noise import TextNoiseCfg
from mlpl.stages.precompute.view_stream import ViewStream
from mlpl.stages.precompute.views import ViewCfg, normalize_views
from mlpl.stages.runtime import NORMALIZATIONS, DistInfo, barrier, init_distributed, rank0_first, shutdown_distributed

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
PHASE = "precompute-clip"


@dataclass(frozen=True)
class PrecomputeCfg:
    """Everything `mlpl precompute-clip` was asked for, typed once at the CLI boundary.

    View fields left None are resolved from the dataset and teacher (`resolve_view_cfg`).

    Attributes:
        dataset: the prepared dataset folder.
        out: the store folder (created, or resumed when it exists with the same settings).
        seeds: the augment seeds e (one per training epoch).
        teacher: which teacher and weights.
        grid: g; None: the generated world's cell layout, else the family's (stages/families.py).
        overlap: r_max.
        flip: random horizontal flip per view.
        normalize: 'clip' or 'imagenet'.
        image_size: view side; None: the teacher's input size.
        interpolation: resize filter; None: the teacher's.
        weak_aug: the weak augmentation T(·).
        noise: apply the text-embedding noise G(·).
        noise_topk: top-k of G(·)'s adjacency; None: the family's k (docs/methods.md §4.2), else all classes.
        noise_seed: seed of G(·)'s weights.
        batch_size: images per teacher forward pass (each contributes V views).
        workers: DataLoader worker processes (0: decode in the main process).
        keep_embeddings: also store the image embeddings `img_emb`.
    """

    dataset: Path
    out: Path
    seeds: tuple[int, ...]
    teacher: TeacherCfg
    grid: int | None = None
    overlap: float = 0.2
    flip: bool = True
    normalize: str = "clip"
    image_size: int | None = None
    interpolation: str | None = None
    weak_aug: bool = False
    noise: bool = False
    noise_topk: int | None = None
    noise_seed: int = 0
    batch_size: int = 32
    workers: int = 1
    keep_embeddings: bool = False

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError("--seeds must be ≥ 1")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise InputError(f"--seeds: augment seeds must be distinct and ≥ 0, got {list(self.seeds)}")
        for name, bounds in PRECOMPUTE_RANGES.items():
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), **bounds)


PRECOMPUTE_RANGES: dict[str, dict[str, float]] = {
    "batch_size": {"ge": 1}, "workers": {"ge": 0}, "grid": {"ge": 1}, "overlap": {"ge": 0, "le": 0.99},
    "image_size": {"ge": 8}, "noise_topk": {"ge": 1},
}
"""The ranges `PrecomputeCfg` checks on construction."""


@dataclass
class PrecomputeReport:
    """What a run did (this rank's share), for the CLI and the benchmark.

    `seconds` and `cpu_seconds` cover the task loop only (wall time; CPU time of this process's threads
    and of its DataLoader workers), not loading the teacher or creating the store.
    """

    store: Path
    tasks_total: int
    tasks_done_before: int
    tasks_run: int
    images: int
    views: int
    seconds: float
    cpu_seconds: float = 0.0
    corrupt_rows: list[int] = field(default_factory=list)
    rank: int = 0
    world: int = 1


def resolve_view_cfg(cfg: PrecomputeCfg, dataset: PreparedDataset, teacher: Any) -> ViewCfg:
    """Fill the view settings left to the dataset (grid) and the teacher (size, interpolation)."""
    grid, source = cfg.grid, dataset.meta.source
    if grid is None:  # a generated world records its cell layout; otherwise the family's g (docs/methods.md §4.1)
        grid = int(source["cells"]) if "cells" in source else dataset_family(dataset.meta).grid
    mean, std = NORMALIZATIONS[cfg.normalize]
    other_mean = bool(teacher.mean) and not np.allclose(teacher.mean, mean, atol=1e-4)
    other_std = bool(teacher.std) and not np.allclose(teacher.std, std, atol=1e-4)
    if other_mean or other_std:
        log.warning("the teacher was trained with mean %s / std %s, the views are normalised with --normalize %s "
                    "(%s / %s)", list(teacher.mean), list(teacher.std), cfg.normalize, list(mean), list(std))
    return ViewCfg(
        grid=grid, overlap=float(cfg.overlap), flip=cfg.flip, normalize=cfg.normalize,
        image_size=cfg.image_size or teacher.image_size, interpolation=cfg.interpolation or teacher.interpolation,
        weak_aug=cfg.weak_aug,
    )


def resolve_noise_cfg(cfg: PrecomputeCfg, dataset: PreparedDataset) -> TextNoiseCfg | None:
    if not cfg.noise:
        if cfg.noise_topk is not None:
            raise InputError("--noise-topk given without --text-noise")
        return None
    topk = cfg.noise_topk or dataset_family(dataset.meta).noise_topk or dataset.meta.num_classes
    return TextNoiseCfg(topk=topk, seed=cfg.noise_seed)


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_precompute(cfg: PrecomputeCfg, progress: ProgressFn | None = None, teacher: Any = None) -> PrecomputeReport:
    """Run stage one (this process's share under torchrun) and return what it did.

    Args:
        cfg: the resolved settings.
        progress: called as progress(phase, images_done, images_total) after every batch.
        teacher: an already loaded `Teacher` (benchmarks); None: load `cfg.teacher`.

    Raises:
        InputError: bad dataset, options, missing weights (before any work), or an existing store
            built with other settings.
    """
    dataset = open_dataset(cfg.dataset)
    # settings that need neither the teacher nor the store fail first, before any work
    check_shards_exist(sorted({task.shard for task in train_tasks(dataset, cfg.seeds)}))
    ViewCfg(grid=cfg.grid or 1, overlap=float(cfg.overlap), flip=cfg.flip, normalize=cfg.normalize,
            image_size=cfg.image_size or 224, interpolation=cfg.interpolation or "bicubic", weak_aug=cfg.weak_aug)
    resolve_noise_cfg(cfg, dataset)
    info = init_distributed()
    try:
        return _run(cfg, dataset, info, progress, teacher)
    finally:
        shutdown_distributed(info)


def _run(cfg: PrecomputeCfg, dataset: PreparedDataset, info: DistInfo, progress: ProgressFn | None,
         teacher: Any) -> PrecomputeReport:
    from mlpl.stages.precompute.teacher import (
        class_text_embeddings,
        default_prompt_template,
        load_teacher,
        resolve_weights,
    )

    tcfg = cfg.teacher
    if tcfg.device is None and torch.cuda.is_available() and info.world > 1:
        tcfg = replace(tcfg, device=f"cuda:{info.local_rank}")
    if teacher is None:
        source = rank0_first(info, lambda: resolve_weights(tcfg))
        teacher = load_teacher(tcfg, source)
    views = resolve_view_cfg(cfg, dataset, teacher)
    noise = resolve_noise_cfg(cfg, dataset)
    template = tcfg.prompt_template or default_prompt_template(tcfg.model)
    classes = dataset.meta.classes
    text_emb, prompts = class_text_embeddings(teacher, classes, template, noise)
    tasks = train_tasks(dataset, cfg.seeds)
    n_train = dataset.meta.splits["train"]
    attrs = StoreAttrs(
        dataset_fingerprint=dataset.meta.fingerprint,
        dataset_name=dataset.meta.name,
        classes=tuple(classes),
        num_rows=n_train,
        rows_per_chunk=dataset.meta.rows_per_shard,
        seeds=tuple(cfg.seeds),
        teacher={**teacher.description, "prompt_template": template, "prompts": prompts,
                 "noise": noise.to_dict() if noise else None},
        views=views.to_dict(),
        embed_dim=int(text_emb.shape[1]),
        keep_embeddings=cfg.keep_embeddings,
    )
    text_np = text_emb.numpy()

    def prepare_store() -> None:
        open_or_create_store(Path(cfg.out), attrs, text_np)

    rank0_first(info, prepare_store)
    store = open_store(Path(cfg.out), mode="r+")
    text_emb = torch.from_numpy(store.text_emb())  # every rank and every resumed run uses the stored ones
    done_before = store.done_matrix()
    mine = [t for t in tasks[info.rank :: info.world] if not done_before[t.seed_index, t.chunk]]
    log.info(
        "%s: %d tasks (%d seeds × %d train shards), %d already done; rank %d of %d runs %d",
        cfg.out, len(tasks), len(cfg.seeds), len(tasks) // len(cfg.seeds), int(done_before.sum()),
        info.rank, info.world, len(mine),
    )
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    images = _run_tasks(store, mine, views, teacher, text_emb, cfg, progress)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    barrier(info)
    corrupt: list[int] = []
    if info.rank == 0:
        corrupt = scan_corrupt_rows(store)
        store.mark_corrupt(corrupt)
        if corrupt:
            log.warning("%d corrupt images (rows %s%s) have no similarities; listed in the store attributes",
                        len(corrupt), corrupt[:10], " ..." if len(corrupt) > 10 else "")
    barrier(info)
    return PrecomputeReport(
        store=Path(cfg.out), tasks_total=len(tasks), tasks_done_before=int(done_before.sum()), tasks_run=len(mine),
        images=images, views=images * views.num_views, seconds=seconds, cpu_seconds=cpu, corrupt_rows=corrupt,
        rank=info.rank, world=info.world,
    )


def _run_tasks(
    store: Store, tasks: list[Task], views: ViewCfg, teacher: Any, text_emb: torch.Tensor, cfg: PrecomputeCfg,
    progress: ProgressFn | None,
) -> int:
    """Run the teacher over `tasks`, writing each whole chunk as soon as its last batch is in.

    On a GPU the host never waits for the batch it has just started: a batch's cosines come back by an
    asynchronous copy that the host collects one batch later, so the next batch's views are on their way
    while the teacher still runs (a wait per batch would leave the GPU idle between batches).
    """
    if not tasks:
        return 0
    by_index = {t.index: t for t in tasks}
    total = sum(t.num_rows for t in tasks)
    text = text_emb.to(teacher.device)
    prefetch = 4
    stream = ViewStream(tasks, views, cfg.batch_size, cfg.workers, slots=prefetch + 2)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.workers,
        prefetch_factor=prefetch if cfg.workers else None, pin_memory=teacher.device.type == "cuda",
    )
    sims_buf: dict[int, np.ndarray] = {}
    emb_buf: dict[int, np.ndarray] = {}
    images = 0
    if progress:
        progress(PHASE, 0, total)
    # one writer thread: compressing and writing a chunk (then its done mark) overlaps the next forward
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
        pending: list[Future] = []

        def land(batch: _InFlight) -> None:
            """The batch's cosines into its task's buffers; its task's chunk to the writer after its last batch."""
            nonlocal images
            batch.land(sims_buf, emb_buf)
            images += batch.images
            if batch.last:
                task = batch.task
                for done in [f for f in pending if f.done()]:
                    done.result()  # a failed write stops the run here
                    pending.remove(done)
                pending.append(writer.submit(write_task, store, task, sims_buf.pop(task.index),
                                             emb_buf.pop(task.index, None)))
            if progress:
                progress(PHASE, images, total)

        in_flight: _InFlight | None = None
        for task_index, rows, batch, ok, last, slot in loader:
            task = by_index[int(task_index)]
            if task.index not in sims_buf:
                sims_buf[task.index] = np.full((task.num_rows, views.num_views, text.shape[0]), np.nan,
                                               dtype=np.float16)
                if cfg.keep_embeddings:
                    emb_buf[task.index] = np.full((task.num_rows, views.num_views, teacher.embed_dim), np.nan,
                                                  dtype=np.float16)
            started = _start_batch(task, rows, batch, ok, bool(last), views, teacher, text, cfg)
            stream.release(int(slot))  # the views are on the device (or copied out of the slot) by now
            if in_flight is not None:
                land(in_flight)
            in_flight = started
        if in_flight is not None:
            land(in_flight)
        for future in pending:
            future.result()
    if sims_buf:
        raise RuntimeError(f"tasks {sorted(sims_buf)} ended without their last batch")  # a bug, not bad input
    return images


@dataclass
class _InFlight:
    """One batch whose cosines (and embeddings) are on their way back to host memory."""

    task: Task
    images: int
    last: bool
    keep: np.ndarray  # the batch's rows that decoded, relative to the task's first row
    sims: torch.Tensor | None  # fp16 [len(keep), V, C], host memory (valid once `ready` fired)
    emb: torch.Tensor | None
    ready: Any  # a CUDA event recorded after the copies; None on the CPU

    def land(self, sims_buf: dict[int, np.ndarray], emb_buf: dict[int, np.ndarray]) -> None:
        if self.sims is None:
            return
        if self.ready is not None:
            self.ready.synchronize()
        sims_buf[self.task.index][self.keep] = self.sims.numpy()
        if self.emb is not None:
            emb_buf[self.task.index][self.keep] = self.emb.numpy()


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """`x` in host memory: an asynchronous copy into page-locked memory from a GPU, else `x` itself."""
    if x.device.type != "cuda":
        return x
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    return out


def _start_batch(
    task: Task, rows: torch.Tensor, batch: torch.Tensor, ok: torch.Tensor, last: bool, views: ViewCfg,
    teacher: Any, text: torch.Tensor, cfg: PrecomputeCfg,
) -> _InFlight:
    """Start the teacher on one batch's views and the copy of their cosines back to the host."""
    v, c = views.num_views, text.shape[0]
    n_ok = int(ok.sum())
    if not n_ok:
        return _InFlight(task, len(rows), last, np.zeros(0, dtype=np.int64), None, None, None)
    keep = rows[ok].numpy() - task.first_row
    good = batch if n_ok == len(ok) else batch[ok]
    x = normalize_views(good.to(teacher.device, non_blocking=True), views.normalize)
    feats = teacher.encode_images(x)
    sims = _to_host((feats @ text.T).view(len(keep), v, c).to(torch.float16))
    emb = _to_host(feats.view(len(keep), v, -1).to(torch.float16)) if cfg.keep_embeddings else None
    ready = None
    if teacher.device.type == "cuda":
        ready = torch.cuda.Event()
        ready.record()
    return _InFlight(task, len(rows), last, keep, sims, emb, ready)
