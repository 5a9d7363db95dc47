"""Stage-two overhead: one training epoch with DAMP pseudo-labels read from the store, versus the same
training with no pseudo-labels, versus the teacher run on every view inside the step ("online").

Measured side by side in one process, modes interleaved over several rounds, median epoch time.

    python benchmarks/stage2_overhead.py --dataset DIR --store STORE [--rounds 3] [--image-size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch
from harness import emit
from mlpl.config import resolve_train_cfg
from mlpl.schemas.dataset import DatasetMeta
from mlpl.stages.train.loop import Trainer
from mlpl.stages.train.models import create_classifier, param_groups


def epoch_seconds(trainer: Trainer) -> float:
    cfg = trainer.cfg
    torch.manual_seed(0)
    model, _ = create_classifier(cfg.backbone, trainer.ds.meta.num_classes, pretrained=False)
    opt = torch.optim.Adam(param_groups(model, cfg.lr, cfg.head_lr_mult))
    t0 = time.perf_counter()
    trainer.train_epoch(model, opt, 1, trainer.quality)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="small-cnn")
    ap.add_argument("--no-online", action="store_true", help="skip the online-teacher mode")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    meta = DatasetMeta.from_json(args.dataset / "dataset.json")
    common = {"image_size": args.image_size, "batch_size": args.batch_size, "backbone": args.backbone,
              "pretrained": False, "workers": 1, "pseudo_store": str(args.store), "epochs": 1}
    modes = {
        # GR is GPR with every pseudo-label undefined: the same training without pseudo-labels
        "no pseudo-labels": resolve_train_cfg("gr", str(args.dataset), meta.name, "/tmp/unused", None, common),
        "DAMP from store": resolve_train_cfg("aevlp", str(args.dataset), meta.name, "/tmp/unused", None, common),
    }
    trainers = {name: Trainer(cfg) for name, cfg in modes.items()}
    if not args.no_online:
        from mlpl.online_teacher import make_online_sims

        trainers["online teacher"] = Trainer(modes["DAMP from store"], online_sims=make_online_sims(args.store))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    epoch_seconds(trainers["no pseudo-labels"])  # warm-up: page cache, lazy imports
    names = list(trainers)
    for r in range(args.rounds):  # rotate the order so no mode always follows the heavy one
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(epoch_seconds(trainers[name]))
    base = statistics.median(times["no pseudo-labels"])
    result = {
        "dataset": meta.name, "train_rows": meta.splits["train"], "image_size": args.image_size,
        "batch_size": args.batch_size, "backbone": args.backbone, "rounds": args.rounds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "median_epoch_seconds": {k: statistics.median(v) for k, v in times.items()},
        "ratio_to_no_pseudo": {k: statistics.median(v) / base for k, v in times.items()},
        "min_epoch_seconds": {k: min(v) for k, v in times.items()},
        "ratio_of_minima": {k: min(v) / min(times["no pseudo-labels"]) for k, v in times.items()},
        "all_epoch_seconds": times,
        "store_teacher": trainers["DAMP from store"].store.attrs.teacher.get("model"),
        "config": dataclasses.asdict(modes["DAMP from store"]),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
