"""Training-step time of `timm:resnet50` against torchvision's `resnet50` (the same network, the same FLOPs) on the
same batch: forward, BCE loss, backward, Adam step, each through `create_classifier` as `mlpl train` builds it.

Measured side by side in one process, the two interleaved over rounds (A B B A ...), CPU time per step
(`time.process_time`, robust to a shared machine) and wall time; the ratio is of medians. On a GPU, `--device cuda
--channels-last --bf16` measures the same pair as a run with channels_last and bf16 autocast would train.

    python benchmarks/backbone_step.py [--image-size 224] [--batch-size 8] [--rounds 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from harness import emit
from mlpl.stages.train.models import create_classifier, param_groups

PAIR = ("resnet50", "timm:resnet50")


def make_step(name: str, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    model, _ = create_classifier(name, 80, pretrained=False, image_size=args.image_size)
    model.to(device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(param_groups(model, 1e-4, 10.0))
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(args.batch_size, 80, generator=gen) < 0.05).float().to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (as training on a GPU runs)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    steps = {name: make_step(name, args, device) for name in PAIR}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    cpu: dict[str, list[float]] = {name: [] for name in PAIR}
    wall: dict[str, list[float]] = {name: [] for name in PAIR}
    for r in range(args.rounds):
        for name in PAIR if r % 2 == 0 else PAIR[::-1]:  # A B, B A: neither always runs first
            c, w = timed(steps[name], device)
            cpu[name].append(c)
            wall[name].append(w)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "median_cpu_s": {name: statistics.median(v) for name, v in cpu.items()},
        "median_wall_s": {name: statistics.median(v) for name, v in wall.items()},
    }
    result["ratio_cpu_timm_over_torchvision"] = result["median_cpu_s"][PAIR[1]] / result["median_cpu_s"][PAIR[0]]
    result["ratio_wall_timm_over_torchvision"] = result["median_wall_s"][PAIR[1]] / result["median_wall_s"][PAIR[0]]
    emit(result, args.json)


if __name__ == "__main__":
    main()
