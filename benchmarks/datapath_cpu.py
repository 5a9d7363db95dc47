"""Both stages' data paths, CPU time per image on one core: the uint8 path against the PIL path, side by side.

Stage two: what a DataLoader worker spends per training image — decode, resize, flip coin, batch assembly
in shared memory. The PIL path (benchmarks/legacy_pil.py) also converts to float and normalises there;
the uint8 path leaves that to the training device (its cost on a CPU is reported apart: on a GPU it is GPU
work). Stage one: decode and all 1 + g² views of an image written into the batch buffer (PIL path: a new
zero-filled shared-memory buffer per batch; uint8 path: one buffer, reused).

Rounds alternate the paths (old, new, new, old, ...) in one process with one torch thread; the median of
the per-round CPU times (time.process_time) and of the per-round ratios is reported, with the pixel
differences between the paths.

    python benchmarks/datapath_cpu.py [--images ../shared/data/coco128] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mlpl.stages.pixels import decode_uint8
from mlpl.stages.precompute.views import ViewCfg, make_views
from mlpl.stages.runtime import IMAGENET_MEAN, IMAGENET_STD
from mlpl.stages.train.stream import DecodeImage, collate, model_input

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legacy_pil  # noqa: E402  (the benchmarks folder is not a package)
from harness import emit  # noqa: E402


class _AsWorker:
    """Run the stream's collate as inside a DataLoader worker (it then builds the batch in shared memory)."""

    def __enter__(self) -> None:
        from torch.utils.data._utils import worker

        self._saved = worker._worker_info
        worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)

    def __exit__(self, *exc: object) -> None:
        from torch.utils.data._utils import worker

        worker._worker_info = self._saved


def stage_two_old(datas: list[bytes], size: int, batch: int) -> None:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rng = np.random.default_rng(0)
    for start in range(0, len(datas), batch):
        images = [legacy_pil.stage_two_image(d, size, bool(rng.random() < 0.5), mean, std)
                  for d in datas[start : start + batch]]
        legacy_pil.stage_two_batch(images)


def stage_two_new(datas: list[bytes], size: int, batch: int) -> list[dict]:
    decode = DecodeImage(size, True, 0)
    out = []
    with _AsWorker():
        for start in range(0, len(datas), batch):
            samples = [{"row": start + i, "bytes": d, "full": np.zeros(1, np.int8)}
                       for i, d in enumerate(datas[start : start + batch])]
            out.append(collate(list(decode(iter(samples)))))
    return out


def stage_one_old(datas: list[bytes], cfg: ViewCfg, batch: int) -> None:
    for start in range(0, len(datas), batch):
        buf = legacy_pil.stage_one_buffer(min(batch, len(datas) - start), cfg)
        for i, d in enumerate(datas[start : start + batch]):
            legacy_pil.stage_one_views(d, 0, start + i, cfg, buf[i])


def stage_one_new(datas: list[bytes], cfg: ViewCfg, batch: int, buf: torch.Tensor) -> None:
    for start in range(0, len(datas), batch):
        for i, d in enumerate(datas[start : start + batch]):
            make_views(decode_uint8(d), 0, start + i, cfg, out=buf[i])


def cpu_ms_per_image(fn, n: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / n * 1e3


def pixel_gaps(datas: list[bytes], size: int, cfg: ViewCfg) -> dict[str, float]:
    """Stage two: max |uint8 − PIL| over pixels; stage one: mean |uint8 − PIL| over view pixels."""
    two, one = 0.0, []
    mean, std = torch.zeros(3).view(3, 1, 1), torch.ones(3).view(3, 1, 1) / 255.0
    for row, d in enumerate(datas[:32]):
        old = legacy_pil.stage_two_image(d, size, False, mean, std)
        new = DecodeImage(size, False, 0)
        sample = next(new(iter([{"row": row, "bytes": d}])))
        two = max(two, float((sample["image"].float() - old).abs().max()))
        ref = np.empty((cfg.num_views, cfg.image_size, cfg.image_size, 3), np.uint8)
        legacy_pil.stage_one_views(d, 0, row, cfg, ref)
        one.append(float(np.abs(make_views(decode_uint8(d), 0, row, cfg).numpy().astype(int) - ref).mean()))
    return {"stage_two_max_abs": two, "stage_one_mean_abs": float(np.mean(one)), "stage_one_worst_image": max(one)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=Path("../shared/data/coco128"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=448, help="stage two's training size")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--view-size", type=int, default=224)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"error: --images {args.images}: no .jpg/.png files")
    torch.set_num_threads(1)
    datas = [p.read_bytes() for p in files]
    n, size, batch = len(datas), args.image_size, args.batch_size
    cfg = ViewCfg(grid=args.grid, overlap=0.2, image_size=args.view_size)
    buf = torch.empty((batch, cfg.num_views, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8).share_memory_()
    batches = stage_two_new(datas, size, batch)  # warm-up (imports, first allocations) for both
    stage_two_old(datas[:batch], size, batch)
    stage_one_old(datas[:4], cfg, batch)
    stage_one_new(datas[:4], cfg, batch, buf)
    times: dict[str, list[float]] = {k: [] for k in ("two_old", "two_new", "one_old", "one_new", "two_device")}
    for r in range(args.rounds):
        pairs = [("two_old", lambda: stage_two_old(datas, size, batch)), ("two_new", lambda: stage_two_new(datas, size,
                                                                                                          batch)),
                 ("one_old", lambda: stage_one_old(datas, cfg, batch)), ("one_new", lambda: stage_one_new(datas, cfg,
                                                                                                          batch, buf))]
        if r % 2:
            pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
        for name, fn in pairs:
            times[name].append(cpu_ms_per_image(fn, n))
        times["two_device"].append(cpu_ms_per_image(
            lambda: [model_input(b, torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD) for b in batches], n))
    ratio_two = [new / old for new, old in zip(times["two_new"], times["two_old"])]
    ratio_one = [new / old for new, old in zip(times["one_new"], times["one_old"])]
    result = {
        "images": n, "source": str(args.images), "rounds": args.rounds, "stage_two_size": size,
        "stage_one_views": f"{cfg.num_views} views of {cfg.image_size} px ({cfg.interpolation}, grid {cfg.grid})",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + ", 1 torch thread",
        "ms_per_image_median": {k: statistics.median(v) for k, v in times.items()},
        "stage_two_ratio_median": statistics.median(ratio_two), "stage_two_ratios": ratio_two,
        "stage_one_ratio_median": statistics.median(ratio_one), "stage_one_ratios": ratio_one,
        "all_ms_per_image": times, "pixels": pixel_gaps(datas, size, cfg),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
