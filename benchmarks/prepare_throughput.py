"""Images per second of `mlpl prepare --dataset coco` on ../shared/data/coco128 against a plain read of the same files.

Both are measured side by side in one run, alternating, several rounds, on a warm page cache (the
first, untimed round warms it), so the ratio compares the converter's work (streamed JSON, image
checks on a thread pool, tar shards, parquet, regimes, atomic rename) with the bare cost of reading
the bytes. Two more rows show where the time goes: read + PIL header check (what the writer does per
image) and read + write of every file (the floor for anything that writes the bytes once). Prints a
Markdown table; `--results FILE` also writes it as the "Prepare throughput" section of that file,
replacing only that section.

    /work/venv/bin/python benchmarks/prepare_throughput.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
SECTION = "## Prepare throughput"


def kept_files(root: Path) -> list[Path]:
    """The image files `prepare` copies: those of images with at least one annotation."""
    from mlpl.stages.prepare.coco import image_labels, read_instances

    inst = read_instances(root / "annotations" / "instances_train2017.json")
    return [root / "train2017" / inst.file_names[i] for i in sorted(image_labels(inst))]


def plain_read(files: list[Path]) -> int:
    return sum(len(p.read_bytes()) for p in files)


def read_and_check(files: list[Path]) -> int:
    from PIL import Image

    total = 0
    for p in files:
        data = p.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        total += len(data)
    return total


def copy_files(files: list[Path], dest: Path) -> int:
    """Read each file and write it to `dest` (the floor for any converter that writes the bytes once)."""
    dest.mkdir()
    total = 0
    for p in files:
        total += (dest / p.name).write_bytes(p.read_bytes())
    shutil.rmtree(dest)
    return total


def run_prepare(root: Path, out: Path) -> int:
    from mlpl.stages.prepare.datasets import PrepareRequest, prepare_dataset

    report = prepare_dataset("coco", PrepareRequest(out=out, root=root, options={"no_test": True}))
    shutil.rmtree(out)
    return sum(report.splits.values())


def measure(root: Path, rounds: int) -> dict[str, list[float]]:
    files = kept_files(root)
    scratch = Path(tempfile.mkdtemp(prefix="mlpl-bench-"))
    timings: dict[str, list[float]] = {"plain read": [], "read + PIL check": [], "read + write (copy)": [],
                                       "prepare --dataset coco": []}
    try:
        for r in range(rounds + 1):  # round 0 warms the page cache and imports; not recorded
            steps = (("plain read", plain_read, (files,)),
                     ("read + PIL check", read_and_check, (files,)),
                     ("read + write (copy)", copy_files, (files, scratch / f"copy{r}")),
                     ("prepare --dataset coco", run_prepare, (root, scratch / f"out{r}")))
            for name, fn, fn_args in steps:
                start = time.perf_counter()
                n = fn(*fn_args)
                elapsed = time.perf_counter() - start
                if name.startswith("prepare"):
                    assert n == len(files), (n, len(files))
                if r:
                    timings[name].append(len(files) / elapsed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return timings


def machine() -> str:
    cores = os.cpu_count()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # torch absent or broken: the benchmark does not need it
        gpu = "GPU unknown"
    return f"{cores}-core CPU ({platform.machine()}, {platform.system()}), {gpu}, Python {platform.python_version()}"


def render(timings: dict[str, list[float]], n_files: int, total_mb: float, rounds: int) -> str:
    base = statistics.median(timings["plain read"])
    lines = [
        SECTION,
        "",
        f"`benchmarks/prepare_throughput.py`: coco128 ({n_files} kept images, {total_mb:.1f} MB of JPEG),",
        f"median of {rounds} alternating rounds on a warm page cache. Machine: {machine()}.",
        "The machine is shared with other work, so absolute figures move between runs; the ratio to a plain",
        "read of the same files, measured in the same run, is the figure to compare.",
        "",
        "| what | images/s (median) | min – max | ratio to plain read |",
        "|---|---|---|---|",
    ]
    for name, values in timings.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:,.0f} | {min(values):,.0f} – {max(values):,.0f} | {med / base:.3f} |")
    prep, copy = (statistics.median(timings[k]) for k in ("prepare --dataset coco", "read + write (copy)"))
    lines += [
        "",
        f"Prepare runs at {prep / base:.3f}× a plain read and {prep / copy:.2f}× a plain read + write of the same "
        "files: the shards hold",
        "the original bytes, so writing them (not the streamed JSON, the image checks or the parquet files) bounds it.",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the section titled by `section`'s first line in a results file, leaving the others."""
    title = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(title + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=COCO128, help="coco128 folder (default ../shared/data/coco128)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: not found; this benchmark needs ../shared/data/coco128")
    files = kept_files(args.root)
    timings = measure(args.root, args.rounds)
    section = render(timings, len(files), sum(p.stat().st_size for p in files) / 1e6, args.rounds)
    print(section)
    if args.results:
        write_section(args.results, section)


if __name__ == "__main__":
    main()
