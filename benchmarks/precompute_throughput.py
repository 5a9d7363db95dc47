"""Stage-one throughput: views/s of the whole `precompute-clip` stage vs the teacher's bare `encode_image`.

Both are measured in one run, side by side, on the same model and the same forward batch (B images
× V views for the stage; B·V random views, normalised by the stage's own code, for the bare model),
alternating bare, stage, bare, stage, ..., bare: each stage run is compared with the mean of the bare
runs on either side of it, which cancels slow drift on a shared machine, and the median over the
stage runs is reported. The stage rate covers the whole task loop: reading shards with WebDataset in
DataLoader workers, decoding, cutting and resizing the views, normalising, the teacher, the cosines
and the Zarr writes. Loading the teacher and creating the store are excluded from both ("incl.
setup" adds them back).

Wall-clock rates on a machine shared with other jobs move with their load, so the CPU time per view
is recorded too (this process's threads plus its DataLoader workers): its ratio bare / stage is what
the stage costs beyond the model, whatever else runs; on an idle machine whose cores the model fills,
the wall-clock ratio tends to it.

Run: python benchmarks/precompute_throughput.py [--teachers digits vit-b-16] [--workers 1 0]
Results are recorded in benchmarks/RESULTS.md ("Stage one throughput").
"""

from __future__ import annotations

import os

# as `mlpl precompute-clip` does (mlpl.commands.precompute.prefer_passive_openmp), before torch loads;
# run with OMP_WAIT_POLICY=ACTIVE to measure OpenMP's default spinning instead
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlpl.stages.precompute.run import PrecomputeCfg, run_precompute
from mlpl.stages.precompute.teacher import Teacher, TeacherCfg, load_teacher
from mlpl.stages.precompute.views import normalize_views
from mlpl.stages.prepare.datasets import PrepareRequest, prepare_dataset

log = logging.getLogger("benchmarks.precompute_throughput")

TEACHERS = {
    "digits": TeacherCfg(model="digits"),
    "vit-b-16": TeacherCfg(model="ViT-B-16", pretrained="random"),  # random weights: timing only
}


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bare_rate(teacher: Teacher, views: int, batch_views: int) -> tuple[float, float]:
    """(views/s, CPU µs/view) of `encode_images` alone, `batch_views` per forward, on random views
    normalised as the stage does (the same channels-last layout, which CPU convolutions run faster)."""
    size = teacher.image_size
    pixels = torch.randint(0, 256, (batch_views, size, size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    x = normalize_views(pixels, "clip")
    teacher.encode_images(x)  # warm-up
    done, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < views:
        teacher.encode_images(x)
        done += batch_views
    return done / (time.perf_counter() - start), (cpu_seconds() - cpu) / done * 1e6


def stage_rate(teacher: Teacher, name: str, dataset: Path, out: Path, batch: int, workers: int,
               args: argparse.Namespace) -> tuple[float, float, float]:
    """(views/s of the task loop, CPU µs/view of the loop, views/s with store creation) of one fresh run."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrecomputeCfg(dataset=dataset, out=out, seeds=tuple(range(args.seeds)), teacher=TEACHERS[name],
                        grid=args.grid, batch_size=batch, workers=workers)
    start = time.perf_counter()
    report = run_precompute(cfg, teacher=teacher)
    total = time.perf_counter() - start
    return report.views / report.seconds, report.cpu_seconds / report.views * 1e6, report.views / total


def measure(name: str, images: int, batch: int, workers: int, reps: int, args: argparse.Namespace,
            tmp: Path) -> dict:
    """bare, stage, bare, ..., stage, bare; median over the stage runs of stage / mean(neighbouring bare)."""
    dataset = tmp / f"digits-{images}"
    if not dataset.exists():  # the train split is 80% of --size; one shard (store chunk) per 64 rows
        prepare_dataset("digits", PrepareRequest(out=dataset, regimes=("full",), rows_per_shard=64,
                                                 options={"size": int(round(images / 0.8)), "test_size": 10}))
    teacher = load_teacher(TEACHERS[name])
    v = 1 + args.grid**2
    n_views = images * v * args.seeds
    bare = [bare_rate(teacher, n_views, batch * v)]
    runs = []
    for _ in range(reps):
        stage, stage_cpu, whole = stage_rate(teacher, name, dataset, tmp / f"store-{name}", batch, workers, args)
        bare.append(bare_rate(teacher, n_views, batch * v))
        (b0, c0), (b1, c1) = bare[-2], bare[-1]
        runs.append({"stage": stage, "whole": whole, "bare": (b0 + b1) / 2, "ratio": stage / ((b0 + b1) / 2),
                     "stage_cpu": stage_cpu, "bare_cpu": (c0 + c1) / 2, "cpu_ratio": (c0 + c1) / 2 / stage_cpu,
                     "load": os.getloadavg()[0]})
        r = runs[-1]
        log.warning("%s, %d workers: stage %.1f views/s between bare %.1f and %.1f: %.2f×; CPU µs/view bare %.0f, "
                    "stage %.0f: %.2f×; load %.1f", name, workers, stage, b0, b1, r["ratio"], r["bare_cpu"], stage_cpu,
                    r["cpu_ratio"], r["load"])
    median = sorted(runs, key=lambda r: r["ratio"])[reps // 2]
    return {"teacher": name, "workers": workers, "size": teacher.image_size, "batch": batch, "views": v,
            "images": images * args.seeds,
            "median": median, "ratios": [r["ratio"] for r in runs],
            "cpu_ratio": statistics.median(r["cpu_ratio"] for r in runs),
            "cpu_ratios": [r["cpu_ratio"] for r in runs], "loads": [r["load"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--digits-images", type=int, default=1280, help="train images for the digits teacher")
    parser.add_argument("--vit-images", type=int, default=8, help="train images for ViT-B-16 (slow on CPU)")
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (× V views), digits")
    parser.add_argument("--vit-batch-size", type=int, default=4, help="images per forward (× V views), ViT-B-16")
    parser.add_argument("--reps", type=int, default=7, help="stage runs for the digits teacher (median reported)")
    parser.add_argument("--vit-reps", type=int, default=3, help="stage runs for ViT-B-16 (median reported)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0],
                        help="DataLoader workers; the digits teacher is measured with each, ViT-B-16 with the first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="mlpl-bench-"))
    rows = []
    try:
        for name in args.teachers:
            if name == "digits":
                for workers in args.workers:
                    rows.append(measure(name, args.digits_images, args.batch_size, workers, args.reps, args, tmp))
            else:
                rows.append(measure(name, args.vit_images, args.vit_batch_size, args.workers[0], args.vit_reps, args,
                                    tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device = "GPU" if torch.cuda.is_available() else "no GPU"
    print(f"\nmachine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {device}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, grid {args.grid}")
    print("| teacher | workers | input | forward batch (images × views) | images | bare encode_image (views/s) "
          "| whole stage (views/s) | stage / bare (wall clock) | bare / stage (CPU time per view) "
          "| stage incl. setup (views/s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median"]
        spread = ", ".join(f"{x:.2f}" for x in r["ratios"])
        cpu_spread = ", ".join(f"{x:.2f}" for x in r["cpu_ratios"])
        batch = f"{r['batch']} × {r['views']} = {r['batch'] * r['views']}"
        print(f"| {r['teacher']} | {r['workers']} | {r['size']} px | {batch} | {r['images']} | {m['bare']:,.1f} | "
              f"{m['stage']:,.1f} | **{m['ratio']:.2f}** ({spread}) | "
              f"**{r['cpu_ratio']:.2f}** ({cpu_spread}) | {m['whole']:,.1f} |")
    print("load averages during the stage runs: "
          + "; ".join(f"{r['teacher']} ({r['workers']} workers) " + ", ".join(f"{x:.1f}" for x in r["loads"])
                      for r in rows))


if __name__ == "__main__":
    main()
