"""A user's own data: `prepare --dataset manifest` against `prepare --dataset coco`, and `mlpl predict` against a
bare forward pass, each pair measured side by side in one run (alternating rounds, median).

Prepare: the same coco128 files (the 126 annotated images, full labels, regimes full and spml) written once from
the COCO instances JSON and once from a CSV manifest listing them; target ≥ 0.9×. Predict: `predict_files`
(decoding and resizing in DataLoader workers, the model, the CSV written) on the 128 coco128 JPEGs against the
same model's forward pass over batches decoded beforehand; target ≥ 0.8× on the CPU. CPU seconds per image
(`time.process_time`, this process only; the decoding workers' time is not in it) are shown beside images/s.

    python benchmarks/own_data_throughput.py --results benchmarks/RESULTS.md
    python benchmarks/own_data_throughput.py --only predict --device cuda --backbone resnet50 --repeat 16 --workers 8
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_throughput import COCO128, machine, write_section  # noqa: E402

SECTION = "## Own data: manifest prepare and predict throughput"


def write_manifest(root: Path, path: Path) -> int:
    """Every annotated coco128 image with its full labels, in the order `prepare --dataset coco` writes them."""
    from mlpl.stages.prepare.coco import image_labels, read_instances

    inst = read_instances(root / "annotations" / "instances_train2017.json")
    labels = image_labels(inst)
    names = [name for _, name in inst.categories]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "labels"])
        for image_id in sorted(labels, key=str):
            writer.writerow([inst.file_names[image_id], "|".join(names[c] for c in labels[image_id])])
    return len(labels)


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, items) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, n


def prepare_rounds(root: Path, scratch: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    from mlpl.stages.prepare.datasets import PrepareRequest, prepare_dataset

    manifest = scratch / "coco128.csv"
    write_manifest(root, manifest)
    regimes = ("full", "spml")

    def coco(out: Path) -> int:
        report = prepare_dataset("coco", PrepareRequest(out=out, root=root, regimes=regimes,
                                                        options={"no_test": True}))
        shutil.rmtree(out)
        return sum(report.splits.values())

    def own(out: Path) -> int:
        report = prepare_dataset("manifest", PrepareRequest(out=out, regimes=regimes, images=root / "train2017",
                                                            options={"manifest": manifest}))
        shutil.rmtree(out)
        return sum(report.splits.values())

    out: dict[str, list[tuple[float, float]]] = {"prepare --dataset coco": [], "prepare --dataset manifest": []}
    for r in range(rounds + 1):  # round 0 warms the page cache and the imports
        for name, fn in (("prepare --dataset coco", coco), ("prepare --dataset manifest", own)):
            wall, cpu, n = timed(lambda fn=fn, r=r: fn(scratch / f"out{r}"))
            if r:
                out[name].append((n / wall, cpu / n))
    return out


def make_run(folder: Path, backbone: str, image_size: int, classes: int) -> Path:
    """A run folder holding only best.safetensors with its metadata (randomly initialised weights)."""
    from mlpl.schemas.run import ModelMeta
    from mlpl.stages.runtime import IMAGENET_MEAN, IMAGENET_STD
    from mlpl.stages.train.checkpoint import save_best
    from mlpl.stages.train.models import create_classifier

    model, _ = create_classifier(backbone, classes, pretrained=False)
    folder.mkdir(parents=True)
    meta = ModelMeta(classes=tuple(f"c{i}" for i in range(classes)), image_size=image_size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, interpolation="bilinear", backbone=backbone, head="linear", head_params={},
                     family="coco", threshold=0.5)
    save_best(folder, model, meta)
    return folder


def predict_rounds(root: Path, scratch: Path, rounds: int, backbone: str, image_size: int, batch: int,
                   workers: int, device: str = "cpu", repeat: int = 1) -> dict[str, list[tuple[float, float]]]:
    import torch
    from mlpl.stages.deploy.model import load_pixels, load_run
    from mlpl.stages.deploy.predict import predict_files, write_predictions

    files = sorted((root / "train2017").glob("*.jpg")) * repeat  # a GPU needs more than 128 images to time
    loaded = load_run(make_run(scratch / "run", backbone, image_size, 80), device)
    batches = [torch.stack([load_pixels(p.read_bytes(), image_size) for p in files[s : s + batch]])
               for s in range(0, len(files), batch)]

    def bare() -> int:
        for images in batches:
            loaded.probabilities(images)
        return len(files)

    def predict(decode: str = "workers") -> int:
        pred = predict_files(loaded, files, batch_size=batch, workers=workers, decode=decode)
        write_predictions(scratch / "pred.csv", pred, {})
        return len(pred.images)

    runs = {"bare forward, pre-decoded batches": bare, "mlpl predict": predict,
            "mlpl predict --decode device": lambda: predict("device")}
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, fn in runs.items():
            wall, cpu, n = timed(fn)
            if r:
                out[name].append((n / wall, cpu / n))
    return out


def table(rows: dict[str, list[tuple[float, float]]], base: str) -> list[str]:
    ref = statistics.median(v for v, _ in rows[base])
    lines = ["| what | images/s (median) | min – max | CPU ms/image (this process) | ratio |", "|---|---|---|---|---|"]
    for name, values in rows.items():
        rates = [v for v, _ in values]
        med = statistics.median(rates)
        cpu = statistics.median(c for _, c in values) * 1000
        lines.append(f"| {name} | {med:,.1f} | {min(rates):,.1f} – {max(rates):,.1f} | {cpu:.1f} | {med / ref:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=COCO128, help="coco128 folder (default ../shared/data/coco128)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where predict runs (cpu, cuda)")
    parser.add_argument("--repeat", type=int, default=1, help="predict each image this many times")
    parser.add_argument("--only", choices=("prepare", "predict"), help="measure one of the two pairs")
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: not found; this benchmark needs ../shared/data/coco128")
    if args.only and args.results:
        raise SystemExit("--results: writes the whole section; leave out --only")
    scratch = Path(tempfile.mkdtemp(prefix="mlpl-bench-"))
    lines = [SECTION, "",
             f"`benchmarks/own_data_throughput.py`: median of {args.rounds} alternating rounds. Machine: {machine()}.",
             "Absolute figures move with the machine's other load; the ratios, measured side by side, are the "
             "figures.", ""]
    ratios = {}
    try:
        if args.only in (None, "prepare"):
            prep = prepare_rounds(args.root, scratch, args.rounds)
            ratios["prepare_ratio"] = statistics.median(v for v, _ in prep["prepare --dataset manifest"]) / \
                statistics.median(v for v, _ in prep["prepare --dataset coco"])
            lines += ["Prepare, the 126 annotated coco128 images (full labels, regimes full and spml), target ≥ 0.9×:",
                      "", *table(prep, "prepare --dataset coco"), "",
                      f"Manifest prepare runs at {ratios['prepare_ratio']:.2f}× the COCO converter.", ""]
        if args.only in (None, "predict"):
            import torch

            pred = predict_rounds(args.root, scratch, args.rounds, args.backbone, args.image_size, args.batch_size,
                                  args.workers, args.device, args.repeat)
            ratios["predict_ratio"] = statistics.median(v for v, _ in pred["mlpl predict"]) / \
                statistics.median(v for v, _ in pred["bare forward, pre-decoded batches"])
            where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "the CPU"
            lines += [f"Predict, the 128 coco128 JPEGs × {args.repeat}, {args.backbone} at {args.image_size} px "
                      f"(random weights, 80 classes), batch {args.batch_size}, {args.workers} decoding worker(s), "
                      f"on {where}; "
                      "target ≥ 0.8×:", "", *table(pred, "bare forward, pre-decoded batches"), "",
                      f"`mlpl predict` runs at {ratios['predict_ratio']:.2f}× the bare forward pass.", ""]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section = "\n".join(lines)
    print(section)
    print(json.dumps(ratios))
    if args.results:
        write_section(args.results, section)

if __name__ == "__main__":
    main()
