"""Per-class decision thresholds that maximise F1 on a run's validation split (`--thresholds val-f1`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError
from mlpl.schemas.run import write_json_atomic

log = logging.getLogger(__name__)

THRESHOLDS_JSON = "thresholds.json"
VAL_F1 = "val-f1"


def f1_thresholds(probs: np.ndarray, targets: np.ndarray, default: float) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds [C], their F1 [C]): per class, the threshold t among the scores that maximises the F1 of
    "p ≥ t" against the targets (ties: the highest t). A class with no positive keeps `default` (F1 is NaN)."""
    n, C = probs.shape
    thresholds = np.full(C, default, dtype=np.float64)
    best_f1 = np.full(C, np.nan)
    for c in range(C):
        y = targets[:, c] != 0
        positives = int(y.sum())
        if positives == 0:
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        scores, hits = probs[order, c], y[order].astype(np.int64)
        tp = np.cumsum(hits)
        predicted = np.arange(1, n + 1)
        last = np.r_[scores[1:] != scores[:-1], True]  # cut only between distinct scores
        f1 = np.where(last, 2 * tp / (predicted + positives), -1.0)
        k = int(np.argmax(f1))
        thresholds[c], best_f1[c] = float(scores[k]), float(f1[k])
    return thresholds, best_f1


def val_f1_thresholds(run: Path, dataset: Path | None = None, workers: int = 0) -> dict[str, Any]:
    """Choose per-class thresholds on the run's val split, record them in RUN/thresholds.json, return that record."""
    import torch
    from mlpl.stages.train.predict import load_run_model, predict
    from mlpl.stages.train.stream import StreamCfg

    cfg, model, ds = load_run_model(Path(run), dataset)
    if not ds.meta.splits.get("val"):
        raise InputError(f"--thresholds {VAL_F1}: dataset {ds.meta.name!r} of run {run} has no val split to choose "
                         "thresholds on; pass --threshold T")
    stream = StreamCfg.of(cfg.data_cfg(), batch_size=cfg.batch_size, workers=workers)
    _, probs, full = predict(model, ds, "val", stream, torch.device("cpu"))
    thresholds, f1 = f1_thresholds(probs, full, cfg.threshold)
    record = {
        "rule": VAL_F1, "classes": list(ds.meta.classes), "thresholds": thresholds.tolist(),
        "val_f1": [None if np.isnan(v) else round(100 * v, 4) for v in f1], "val_images": int(len(probs)),
        "default": cfg.threshold, "dataset_fingerprint": ds.meta.fingerprint,
        "note": "classes without a positive in val keep the default threshold (val_f1 null)",
    }
    write_json_atomic(Path(run) / THRESHOLDS_JSON, record)
    log.info("per-class thresholds chosen on %d val images → %s", len(probs), Path(run) / THRESHOLDS_JSON)
    return record


def read_thresholds(run: Path, classes: tuple[str, ...]) -> list[float] | None:
    """The per-class thresholds recorded in RUN/thresholds.json, or None if there are none."""
    path = Path(run) / THRESHOLDS_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        thresholds = [float(t) for t in record["thresholds"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: malformed thresholds record ({e})") from None
    if tuple(record.get("classes", ())) != tuple(classes):
        raise InputError(f"{path}: its classes differ from the run's model; choose them again with "
                         f"--thresholds {VAL_F1}")
    return thresholds
