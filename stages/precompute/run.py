"""Stage one's writer: the teacher over every view of every train image for every augment seed, into the store.

Work is split into tasks (seed index, train shard); one task fills one whole Zarr chunk of `sims`
(chunk k = train shard k, see schemas/store.py), then sets `done[s, k]`. Rank r of a torchrun world
takes tasks r::world; a rerun skips tasks already done, so a killed run resumes and ends
byte-identical to an uninterrupted one. Inside a process, DataLoader workers read whole shards with
WebDataset, decode images and cut the views (views.py), and hand over uint8 batches of whole images
(all V views of an image together); the main process normalises, runs the teacher and writes.
A batch never mixes tasks and always holds the same rows whatever the rank or worker count, so the
numbers do not depend on how the work was split.

An image that cannot be decoded is skipped with a warning: its rows stay NaN, and the rows are listed
in the store attribute `corrupt_rows`, derived at the end of every run from the NaN rows of the
written chunks (so a resumed run lists them too). Stage two treats a NaN row as "no pseudo-label".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds  # imported here, so that DataLoader workers inherit it instead of importing it
from mlpl.schemas.dataset import PreparedDataset, open_dataset
from mlpl.schemas.errors import InputError
from mlpl.schemas.store import Store, StoreAttrs, create_store, open_store
from mlpl.stages.precompute.teacher import TeacherCfg
from mlpl.stages.precompute.text_noise import NOISE_TOPK, TextNoiseCfg
from mlpl.stages.precompute.views import NORMALIZATIONS, ViewCfg, make_views, normalize_views

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
PHASE = "precompute-clip"
DEFAULT_GRID = {"digits": 3, "cub": 5}  # docs/methods.md §4.1: g = 4, CUB 5; digits: its 3×3 cell layout
# a resumed run uses the store's text embeddings; recomputed ones may differ by rounding on other hardware,
# anything larger means another teacher
TEXT_EMB_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PrecomputeCfg:
    """Everything `mlpl precompute-clip` was asked for, typed once at the CLI boundary.

    View fields left None are resolved from the dataset and teacher (`resolve_view_cfg`).

    Attributes:
        dataset: the prepared dataset folder.
        out: the store folder (created, or resumed when it exists with the same settings).
        seeds: the augment seeds e (one per training epoch).
        teacher: which teacher and weights.
        grid: g; None: 3 for digits, 5 for CUB, else 4.
        overlap: r_max.
        flip: random horizontal flip per view.
        normalize: 'clip' or 'imagenet'.
        image_size: view side; None: the teacher's input size.
        interpolation: resize filter; None: the teacher's.
        weak_aug: the weak augmentation T(·).
        noise: apply the text-embedding noise G(·).
        noise_topk: top-k of G(·)'s adjacency; None: docs/methods.md's per-dataset k, else all classes.
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
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.workers < 0:
            raise InputError(f"--workers must be ≥ 0, got {self.workers}")


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


# --------------------------------------------------------------------------------------------------
# distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def init_distributed() -> DistInfo:
    """Join the torchrun world when launched by torchrun (RANK/WORLD_SIZE set): gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(rank, world, local)


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the torchrun world joined by `init_distributed`."""
    if info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _rank0_first(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0, then (if it worked) on the other ranks; a failure on rank 0 fails every rank."""
    if info.world <= 1:
        return fn()
    import torch.distributed as dist

    result, error = None, None
    if info.rank == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below after the other ranks are told
            error = e
    status = [None if error is None else (isinstance(error, InputError), f"{error}")]
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        is_input, message = status[0]
        raise (InputError if is_input else RuntimeError)(message)
    return fn() if info.rank != 0 else result


# --------------------------------------------------------------------------------------------------
# reading shards into view batches (DataLoader workers)

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


# --------------------------------------------------------------------------------------------------
# the run

def resolve_view_cfg(cfg: PrecomputeCfg, dataset: PreparedDataset, teacher: Any) -> ViewCfg:
    """Fill the view settings left to the dataset (grid) and the teacher (size, interpolation)."""
    name = dataset.meta.name
    grid = cfg.grid if cfg.grid is not None else int(dataset.meta.source.get("cells", DEFAULT_GRID.get(name, 4)))
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
    topk = cfg.noise_topk or NOISE_TOPK.get(dataset.meta.name, dataset.meta.num_classes)
    return TextNoiseCfg(topk=topk, seed=cfg.noise_seed)


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


def _normalised_json(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: store has {json.dumps(a)[:80]}, this run {json.dumps(b)[:80]}")
    return out


def open_or_create_store(out: Path, attrs: StoreAttrs, text_emb: np.ndarray) -> Store:
    """Create the store, or open an existing one after checking it was built with the same settings."""
    if not (out / "zarr.json").exists():
        if out.exists() and any(out.iterdir()):
            raise InputError(f"--out {out}: exists and is not a pseudo-label store; choose another --out")
        if out.exists():
            out.rmdir()
        # built beside `out` and renamed, so that a run killed while creating leaves no half store
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            tmp.rmdir()
            create_store(tmp, attrs, text_emb)
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return open_store(out, mode="r+")
    store = open_store(out, mode="r+")
    diffs = _differences(_normalised_json(store.attrs.to_dict()), _normalised_json(attrs.to_dict()))
    if diffs:
        raise InputError(
            f"--out {out}: an existing store built with other settings ({'; '.join(diffs[:6])}); "
            "pass the same options to resume it, or choose another --out"
        )
    gap = float(np.abs(store.text_emb() - text_emb.astype(np.float32)).max())
    if gap > TEXT_EMB_TOLERANCE:
        raise InputError(
            f"--out {out}: the class text embeddings differ from the ones in the store by up to {gap:.2g} "
            "(other teacher weights or library versions); choose another --out"
        )
    return store


def scan_corrupt_rows(store: Store) -> list[int]:
    """Rows whose similarities are all NaN in a written chunk (one done seed per chunk is enough)."""
    done = store.done_matrix()
    rows: list[int] = []
    for chunk in range(done.shape[1]):
        seeds = np.flatnonzero(done[:, chunk])
        if len(seeds):
            sims = store.read_chunk(int(seeds[0]), chunk)
            bad = np.isnan(sims.astype(np.float32)).reshape(len(sims), -1).all(axis=1)
            rows += (store.chunk_rows(chunk)[0] + np.flatnonzero(bad)).tolist()
    return rows


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _write_task(store: Store, task: Task, sims: np.ndarray, emb: np.ndarray | None) -> None:
    stop = task.first_row + task.num_rows
    store.sims[task.seed_index, task.first_row : stop] = sims
    if emb is not None:
        store.group["img_emb"][task.seed_index, task.first_row : stop] = emb
    store.done[task.seed_index, task.chunk] = 1  # last: a chunk is done only once it is fully written


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
    train_tasks(dataset, cfg.seeds)
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
        source = _rank0_first(info, lambda: resolve_weights(tcfg))
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

    _rank0_first(info, prepare_store)
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
    _barrier(info)
    corrupt: list[int] = []
    if info.rank == 0:
        corrupt = scan_corrupt_rows(store)
        store.mark_corrupt(corrupt)
        if corrupt:
            log.warning("%d corrupt images (rows %s%s) have no similarities; listed in the store attributes",
                        len(corrupt), corrupt[:10], " ..." if len(corrupt) > 10 else "")
    _barrier(info)
    return PrecomputeReport(
        store=Path(cfg.out), tasks_total=len(tasks), tasks_done_before=int(done_before.sum()), tasks_run=len(mine),
        images=images, views=images * views.num_views, seconds=seconds, cpu_seconds=cpu, corrupt_rows=corrupt,
        rank=info.rank, world=info.world,
    )


def _run_tasks(
    store: Store, tasks: list[Task], views: ViewCfg, teacher: Any, text_emb: torch.Tensor, cfg: PrecomputeCfg,
    progress: ProgressFn | None,
) -> int:
    """Run the teacher over `tasks`, writing each whole chunk as soon as its last batch is in."""
    if not tasks:
        return 0
    by_index = {t.index: t for t in tasks}
    total = sum(t.num_rows for t in tasks)
    text = text_emb.to(teacher.device)
    loader = torch.utils.data.DataLoader(
        ViewStream(tasks, views, cfg.batch_size), batch_size=None, num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None, pin_memory=teacher.device.type == "cuda",
    )
    sims_buf: dict[int, np.ndarray] = {}
    emb_buf: dict[int, np.ndarray] = {}
    images = 0
    if progress:
        progress(PHASE, 0, total)
    # one writer thread: compressing and writing a chunk (then its done mark) overlaps the next forward
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
        pending: list[Future] = []
        for task_index, rows, batch, ok, last in loader:
            images += _teach_batch(task_index, rows, batch, ok, by_index, sims_buf, emb_buf, views, teacher, text, cfg)
            if last:
                task = by_index[int(task_index)]
                for done in [f for f in pending if f.done()]:
                    done.result()  # a failed write stops the run here
                    pending.remove(done)
                pending.append(writer.submit(_write_task, store, task, sims_buf.pop(task.index),
                                             emb_buf.pop(task.index, None)))
            if progress:
                progress(PHASE, images, total)
        for future in pending:
            future.result()
    if sims_buf:
        raise RuntimeError(f"tasks {sorted(sims_buf)} ended without their last batch")  # a bug, not bad input
    return images


def _teach_batch(
    task_index: int, rows: torch.Tensor, batch: torch.Tensor, ok: torch.Tensor, by_index: dict[int, Task],
    sims_buf: dict[int, np.ndarray], emb_buf: dict[int, np.ndarray], views: ViewCfg, teacher: Any,
    text: torch.Tensor, cfg: PrecomputeCfg,
) -> int:
    """Cosines of one batch's views into its task's buffers; returns the number of images."""
    task = by_index[int(task_index)]
    v, c = views.num_views, text.shape[0]
    if task.index not in sims_buf:
        sims_buf[task.index] = np.full((task.num_rows, v, c), np.nan, dtype=np.float16)
        if cfg.keep_embeddings:
            emb_buf[task.index] = np.full((task.num_rows, v, teacher.embed_dim), np.nan, dtype=np.float16)
    n_ok = int(ok.sum())
    if n_ok:
        keep = rows[ok].numpy() - task.first_row
        good = batch if n_ok == len(ok) else batch[ok]
        x = normalize_views(good.to(teacher.device, non_blocking=True), views.normalize)
        feats = teacher.encode_images(x)
        sims = (feats @ text.T).view(len(keep), v, c)
        sims_buf[task.index][keep] = sims.to(torch.float16).cpu().numpy()
        if cfg.keep_embeddings:
            emb_buf[task.index][keep] = feats.view(len(keep), v, -1).to(torch.float16).cpu().numpy()
    return len(rows)
