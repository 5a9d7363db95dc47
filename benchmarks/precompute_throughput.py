"""Stage-one throughput: views/s of the whole `precompute-clip` stage vs the teacher's bare `encode_image`.

Both are measured in one run, side by side, on the same model and the same forward batch (B images
× V views for the stage, B·V random views for the bare model): bare, stage, bare again (the bare rate
is the mean of the two, which cancels slow drift on a shared machine). The stage rate covers
everything of the task loop: reading shards with WebDataset in DataLoader workers, decoding, cutting
and resizing the views, normalising, the teacher, the cosines and the Zarr writes. Teacher loading and
the one-off text embeddings are excluded from both.

Run: python benchmarks/precompute_throughput.py [--teachers digits vit-b-16] [--workers 1]
Results are recorded in benchmarks/RESULTS.md ("Stage one throughput").
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from stages.precompute.run import PrecomputeCfg, run_precompute
from stages.precompute.teacher import TeacherCfg, load_teacher
from stages.precompute.views import normalize_views
from stages.prepare.datasets import PrepareRequest, prepare_dataset

log = logging.getLogger("benchmarks.precompute_throughput")

TEACHERS = {
    "digits": TeacherCfg(model="digits"),
    "vit-b-16": TeacherCfg(model="ViT-B-16", pretrained="random"),  # random weights: timing only
}


def bare_rate(teacher, views: int, image_size: int, batch_views: int) -> float:
    """Views/s of `encode_images` alone, `batch_views` per forward, on random views normalised as the stage
    does (same memory layout: channels-last, which the CPU convolutions run faster than contiguous NCHW)."""
    pixels = torch.randint(0, 256, (batch_views, image_size, image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    x = normalize_views(pixels, "clip")
    teacher.encode_images(x)  # warm-up
    done, start = 0, time.perf_counter()
    while done < views:
        teacher.encode_images(x)
        done += batch_views
    return done / (time.perf_counter() - start)


def stage_rate(teacher, dataset: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(views/s of the task loop, views/s including store creation) of one fresh `run_precompute`."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrecomputeCfg(dataset=dataset, out=out, seeds=tuple(range(args.seeds)), teacher=TEACHERS[args.current],
                        grid=args.grid, batch_size=args.batch_size, workers=args.workers)
    start = time.perf_counter()
    report = run_precompute(cfg, teacher=teacher)
    total = time.perf_counter() - start
    return report.views / report.seconds, report.views / total


def measure(name: str, images: int, batch: int, reps: int, args: argparse.Namespace, tmp: Path) -> dict:
    """bare, stage, bare, stage, ..., bare; each stage run is compared with the mean of its two neighbours."""
    dataset = tmp / f"digits-{images}"
    if not dataset.exists():  # the train split is 80% of --size; one shard (store chunk) per 64 rows
        prepare_dataset("digits", PrepareRequest(out=dataset, regimes=("full",), rows_per_shard=64,
                                                 options={"size": int(round(images / 0.8)), "test_size": 10}))
    teacher = load_teacher(TEACHERS[name])
    v = 1 + args.grid**2
    run_args = argparse.Namespace(**{**vars(args), "batch_size": batch, "current": name})
    n_views = images * v * args.seeds
    bare = [bare_rate(teacher, n_views, teacher.image_size, batch * v)]
    loops, wholes, ratios = [], [], []
    for _ in range(reps):
        loop, whole = stage_rate(teacher, dataset, tmp / f"store-{name}", run_args)
        bare.append(bare_rate(teacher, n_views, teacher.image_size, batch * v))
        loops.append(loop)
        wholes.append(whole)
        ratios.append(loop / ((bare[-2] + bare[-1]) / 2))
        log.warning("%s: stage %.1f views/s between bare %.1f and %.1f: %.2f×", name, loop, bare[-2], bare[-1],
                    ratios[-1])
    median = sorted(range(reps), key=lambda i: ratios[i])[reps // 2]
    return {"teacher": name, "size": teacher.image_size, "batch": batch, "views": v, "images": images * args.seeds,
            "bare": (bare[median] + bare[median + 1]) / 2, "stage": loops[median], "whole": wholes[median],
            "ratio": ratios[median], "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--digits-images", type=int, default=2560, help="train images for the digits teacher")
    parser.add_argument("--vit-images", type=int, default=8, help="train images for ViT-B-16 (slow on CPU)")
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (× V views), digits")
    parser.add_argument("--vit-batch-size", type=int, default=4, help="images per forward (× V views), ViT-B-16")
    parser.add_argument("--reps", type=int, default=5, help="stage runs for the digits teacher (median reported)")
    parser.add_argument("--vit-reps", type=int, default=3, help="stage runs for ViT-B-16 (median reported)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="mlpl-bench-"))
    rows = []
    try:
        for name in args.teachers:
            if name == "digits":
                rows.append(measure(name, args.digits_images, args.batch_size, args.reps, args, tmp))
            else:
                rows.append(measure(name, args.vit_images, args.vit_batch_size, args.vit_reps, args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device = "GPU" if torch.cuda.is_available() else "no GPU"
    print(f"\nmachine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, DataLoader workers {args.workers}, "
          f"grid {args.grid}")
    print("| teacher | input | forward batch (images × views) | images | bare encode_image (views/s) "
          "| whole stage (views/s) | stage / bare | stage incl. setup (views/s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        spread = ", ".join(f"{x:.2f}" for x in r["ratios"])
        print(f"| {r['teacher']} | {r['size']} px | {r['batch']} × {r['views']} = {r['batch'] * r['views']} | "
              f"{r['images']} | {r['bare']:,.1f} | {r['stage']:,.1f} | **{r['ratio']:.2f}** ({spread}) | "
              f"{r['whole']:,.1f} |")


if __name__ == "__main__":
    main()
