"""Does the data path keep a GPU fed? Both stages against their bare model, in one command (< 8 min on one GPU).

Stage one: ViT-B-16 `encode_image` in fp16 on resident views (B images × V views per forward) against the
whole `precompute-clip` task loop. Stage two: ResNet-50 training steps at 448 px in bf16 on resident tensors
against `mlpl train` (method `an`, same batch). Each stage's data path alone (the DataLoader's batches copied
to the device and normalised there, no model) is measured against both. The dataset is made on the spot:
synthetic JPEGs whose sizes follow COCO's (mostly 640 px on the long side, 4:3, 3:2, portrait, square),
prepared with `mlpl prepare --dataset manifest`; the models have random weights (timing only). Targets:
stage / bare ≥ 0.9 for both stages.

    python benchmarks/gpu_check.py                        # on the GPU
    python benchmarks/gpu_check.py --device cpu --tiny    # the wiring, in seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import io
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

# (width, height, share) of COCO's most common image sizes
COCO_SIZES = ((640, 480, 0.40), (640, 427, 0.22), (480, 640, 0.12), (640, 424, 0.06), (427, 640, 0.06),
              (500, 375, 0.05), (640, 640, 0.04), (640, 360, 0.05))


def synthetic_jpeg(seed: int, scale: float) -> bytes:
    """A JPEG of COCO-like size and content (smooth colour fields plus texture, quality 90)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    sizes = np.array([s[:2] for s in COCO_SIZES])
    width, height = (sizes[rng.choice(len(COCO_SIZES), p=[s[2] for s in COCO_SIZES])] * scale).astype(int)
    coarse = Image.fromarray(rng.randint(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    pixels = np.clip(pixels + rng.randint(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_dataset(root: Path, images: int, classes: int, scale: float, rows_per_shard: int) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    lines = ["image,split,labels"]
    with ProcessPoolExecutor() as pool:
        for i, data in enumerate(pool.map(synthetic_jpeg, range(images), [scale] * images, chunksize=16)):
            (folder / f"{i:06d}.jpg").write_bytes(data)
            labels = "|".join(f"c{c}" for c in sorted(set(rng.randint(0, classes, 1 + i % 3))))
            lines.append(f"{i:06d}.jpg,{'val' if i % 10 == 0 else 'train'},{labels}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    from mlpl.cli import main as cli

    out = root / "data"
    try:
        cli(["prepare", "--dataset", "manifest", "--manifest", str(root / "manifest.csv"), "--images", str(folder),
             "--out", str(out), "--rows-per-shard", str(rows_per_shard), "--family", "coco", "--regime", "spml"])
    except SystemExit as e:
        if e.code:
            raise
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_one(args: argparse.Namespace, dataset: Path, root: Path, device: torch.device) -> dict[str, float]:
    from mlpl.schemas.dataset import open_dataset
    from mlpl.stages.precompute.run import PrecomputeCfg, resolve_view_cfg, run_precompute
    from mlpl.stages.precompute.tasks import train_tasks
    from mlpl.stages.precompute.teacher import TeacherCfg, load_teacher
    from mlpl.stages.precompute.view_stream import ViewStream
    from mlpl.stages.precompute.views import normalize_views

    precision = "fp16" if device.type == "cuda" else "fp32"
    tcfg = TeacherCfg(model=args.teacher, pretrained="random" if args.teacher != "digits" else None,
                      precision=precision, device=str(device))
    teacher = load_teacher(tcfg)
    cfg = PrecomputeCfg(dataset=dataset, out=root / "store", seeds=(0,), teacher=tcfg, grid=args.grid,
                        batch_size=args.view_batch, workers=args.workers)
    views = resolve_view_cfg(cfg, open_dataset(dataset), teacher)
    v, size = views.num_views, views.image_size
    x = normalize_views(torch.randint(0, 256, (args.view_batch * v, size, size, 3), dtype=torch.uint8).to(device),
                        views.normalize)
    teacher.encode_images(x)  # warm-up
    synchronize(device)
    start, done = time.perf_counter(), 0
    while done < args.bare_views:
        teacher.encode_images(x)
        done += len(x)
    synchronize(device)
    bare = done / (time.perf_counter() - start)
    stamps: list[tuple[float, int]] = []  # (time, images done) after every batch

    def progress(phase: str, done: int, total: int) -> None:
        stamps.append((time.perf_counter(), done))

    report = run_precompute(cfg, teacher=teacher, progress=progress)
    whole = report.views / report.seconds
    # after the first batch: the rate once the workers have started (their start is paid once per run)
    (t_first, n_first), (t_last, n_last) = stamps[1], stamps[-1]
    steady = (n_last - n_first) * v / max(t_last - t_first, 1e-9)
    stream = ViewStream(train_tasks(open_dataset(dataset), (0,)), views, args.view_batch, args.workers)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                         prefetch_factor=4 if args.workers else None,
                                         pin_memory=device.type == "cuda")
    start, images = time.perf_counter(), 0
    for _, rows, batch, _, _, slot in loader:
        normalize_views(batch.to(device, non_blocking=True), views.normalize)
        stream.release(int(slot))
        images += len(rows)
    synchronize(device)
    data = images * v / (time.perf_counter() - start)
    return {"bare": bare, "whole": whole, "data": data, "unit": "views/s", "steady": steady,
            "startup": t_first - stamps[0][0]}


def stage_two(args: argparse.Namespace, dataset: Path, root: Path, device: torch.device,
              decode: str = "workers") -> dict[str, float]:
    from mlpl.config import resolve_train_cfg
    from mlpl.schemas.dataset import open_dataset
    from mlpl.stages.pixels import normalize_uint8
    from mlpl.stages.train.loop import Trainer
    from mlpl.stages.train.models import create_classifier
    from mlpl.stages.train.stream import model_input, train_loader

    ds = open_dataset(dataset)
    size, batch = args.image_size, args.train_batch
    model, _ = create_classifier(args.backbone, ds.meta.num_classes, pretrained=False)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).to(device).permute(0, 3, 1, 2)
    x = normalize_uint8(pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    y = (torch.rand(batch, ds.meta.num_classes, device=device) < 0.1).float()
    amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.bare_steps):
        step()
    synchronize(device)
    bare = args.bare_steps / (time.perf_counter() - start)

    stamps: list[float] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase.startswith("epoch"):
            stamps.append(time.perf_counter())

    overrides = {"backbone": args.backbone, "pretrained": False, "image_size": size, "batch_size": batch,
                 "epochs": 1, "workers": args.workers, "device": str(device), "max_batches": args.train_steps,
                 "decode": decode}
    cfg = resolve_train_cfg("an", str(dataset), ds.meta.name, str(root / f"run-{decode}"), None, overrides,
                            family=ds.meta.family)
    Trainer(cfg, progress=progress).run()
    skip = min(3, len(stamps) - 2)  # the first batches wait for the workers to start
    whole = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])

    from mlpl.stages.train.stream import StreamCfg

    stream = StreamCfg(image_size=size, batch_size=batch, workers=args.workers,
                       pin_memory=device.type == "cuda", decode=decode, device=str(device))
    obs = np.zeros((ds.meta.splits["train"], ds.meta.num_classes), dtype=np.int8)
    start, images = time.perf_counter(), 0
    for b in train_loader(ds, obs, stream, epoch=0, seed=0):
        model_input(b, device, stream.mean, stream.std)
        images += len(b["row"])
    synchronize(device)
    data = images / (time.perf_counter() - start) / batch
    return {"bare": bare, "whole": whole, "data": data, "unit": f"steps/s (batch {batch})", "steady": whole,
            "startup": stamps[skip] - stamps[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny world (digits teacher, small CNN) to check wiring")
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--images", type=int, default=None)
    args = ap.parse_args(argv)
    from mlpl.stages.runtime import pick_device, resolve_workers

    device = pick_device(args.device)
    args.workers = resolve_workers(args.workers)
    tiny = {"images": 24, "scale": 0.1, "rows_per_shard": 8, "teacher": "digits", "grid": 2, "view_batch": 4,
            "bare_views": 100, "backbone": "small-cnn", "image_size": 32, "train_batch": 4, "bare_steps": 3,
            "train_steps": 6}
    full = {"images": 4096, "scale": 1.0, "rows_per_shard": 256, "teacher": "ViT-B-16", "grid": 4, "view_batch": 32,
            "bare_views": 20000, "backbone": "resnet50", "image_size": 448, "train_batch": 64, "bare_steps": 30,
            "train_steps": 40}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    root = Path(tempfile.mkdtemp(prefix="mlpl-gpu-check-"))
    try:
        t0 = time.perf_counter()
        dataset = make_dataset(root, args.images, 20, args.scale, args.rows_per_shard)
        one = stage_one(args, dataset, root, device)
        two = stage_two(args, dataset, root, device)
        two_device = stage_two(args, dataset, root, device, decode="device")
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
        print(f"\ndevice: {name}; {args.workers} DataLoader workers; {args.images} synthetic JPEGs; "
              f"{time.perf_counter() - t0:.0f} s")
        print("| stage | unit | bare model | whole stage | stage / bare | data path alone | data / bare |")
        print("|---|---|---|---|---|---|---|")
        for label, r in ((f"one: {args.teacher} encode_image", one), (f"two: {args.backbone} train step", two),
                         (f"two, --decode device: {args.backbone} train step", two_device)):
            print(f"| {label} | {r['unit']} | {r['bare']:,.1f} | {r['whole']:,.1f} | {r['whole'] / r['bare']:.2f} | "
                  f"{r['data']:,.1f} | {r['data'] / r['bare']:.2f} |")
        for label, r in (("one", one), ("two", two), ("two, --decode device", two_device)):
            print(f"stage {label}: first batches after {r['startup']:.2f} s; after them {r['steady']:,.1f} "
                  f"{r['unit']} ({r['steady'] / r['bare']:.2f}× bare)")
        sys.stdout.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
