"""Choose the digits preset's DAMP thresholds on the validation split only.

Trains AEVLP (GPR + DAMP) on the digits world for each setting of a small grid and keeps the setting
with the best validation mAP (the test split is not looked at). The teacher's similarity scale differs
from CLIP's, so docs/methods.md's per-dataset values do not carry over.

    python benchmarks/tune_digits_damp.py --dataset DIR --store STORE --out runs/tune [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from mlpl.config import resolve_train_cfg
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import DatasetMeta
from mlpl.stages.train.loop import Trainer

GRID = {"tau": (0.01, 0.05), "zeta_global": (0.3, 0.5), "delta_neg": (0.3, 0.5)}
FIXED = {"nu": 0.3, "top_k": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    meta = DatasetMeta.from_json(args.dataset / "dataset.json")
    results = []
    for values in itertools.product(*GRID.values()):
        params = {**FIXED, **dict(zip(GRID, values))}
        name = "-".join(f"{k}{v}" for k, v in params.items())
        out = args.out / name
        if (out / run_schema.SUMMARY_JSON).exists():
            summary = run_schema.read_summary(out)
        else:
            cfg = resolve_train_cfg("aevlp", str(args.dataset), meta.name, str(out), None,
                                    {"pseudo_store": str(args.store), "pseudo_params": params})
            summary = Trainer(cfg).run()
        results.append({"params": params, "val_map": summary.val.map, "best_epoch": summary.best_epoch,
                        "pseudo_quality": summary.pseudo_quality})
        print(json.dumps(results[-1]), flush=True)
    best = max(results, key=lambda r: r["val_map"])
    report = {"grid": GRID, "fixed": FIXED, "selected_by": "best validation mAP", "best": best, "all": results}
    print(json.dumps({"best": best}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
