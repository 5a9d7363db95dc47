"""CDUL's claim on the digits world: does the trained network beat its own initial pseudo-labels?

CDUL initialises soft pseudo-labels of the training images from the teacher and trains a network that refines
them; its paper claims the network ends above those initial labels. Both are measured here on the same images
(the training images, the only ones the initial labels exist for) against their full labels: the initial
labels as the label state holds them before the first step, the network in eval mode with its best-validation
checkpoint. No label is seen in training (regime `none`).

    python benchmarks/cdul_claim.py [--out runs/bench-cdul] [--size 300] [--epochs 6] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-cdul"))
    ap.add_argument("--size", type=int, default=300, help="digits official train canvases")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()

    from mlpl.cli import main as cli
    from mlpl.config import resolve_train_cfg
    from mlpl.schemas import run as run_schema
    from mlpl.schemas.dataset import open_dataset
    from mlpl.stages.evaluate.metrics import evaluate_scores
    from mlpl.stages.train.loop import Trainer
    from mlpl.stages.train.models import create_classifier
    from mlpl.stages.train.predict import predict
    from safetensors.torch import load_file

    def mlpl(*argv: object) -> None:
        try:
            cli([str(a) for a in argv])
        except SystemExit as e:
            if e.code:
                raise

    data, store = args.out / "data", args.out / "store"
    if not (data / "dataset.json").exists():
        mlpl("prepare", "--dataset", "digits", "--out", data, "--size", args.size, "--test-size", args.size // 6,
             "--rows-per-shard", 64, "--regime", "none")
    mlpl("precompute-clip", "--dataset", data, "--out", store, "--grid", 3, "--seeds", 1, "--workers", 0)
    ds = open_dataset(data)
    start, stop = ds.meta.split_range("train")
    full = ds.labels.matrix(np.arange(start, stop))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        out = args.out / f"cdul-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = resolve_train_cfg("cdul", str(data), ds.meta.name, str(out), None,
                                {"pseudo_store": str(store), "seed": seed, "epochs": args.epochs,
                                 "image_size": args.image_size, "workers": 0})
        trainer = Trainer(cfg)
        initial = evaluate_scores(trainer.labels.labels(), full)["map"]
        trainer.run()
        model, _ = create_classifier(cfg.backbone, ds.meta.num_classes, pretrained=False)
        model.load_state_dict(load_file(str(out / run_schema.BEST_WEIGHTS)))
        _, probs, labels = predict(model, ds, "train", trainer.stream, trainer.device)
        assert np.array_equal(labels, full)
        rows.append({"seed": seed, "initial_map": initial, "network_map": evaluate_scores(probs, labels)["map"]})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n`python benchmarks/cdul_claim.py --size {args.size} --epochs {args.epochs} --seeds {args.seeds}`\n")
    print("| seed | initial pseudo-labels, train mAP | trained network, train mAP |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['initial_map']:.2f} | {r['network_map']:.2f} |")
    mean_initial = float(np.mean([r["initial_map"] for r in rows]))
    mean_network = float(np.mean([r["network_map"] for r in rows]))
    print(f"| mean | {mean_initial:.2f} | {mean_network:.2f} |")
    print(f"\nclaim (network > initial labels): {'holds' if mean_network > mean_initial else 'does not hold'}")


if __name__ == "__main__":
    main()
