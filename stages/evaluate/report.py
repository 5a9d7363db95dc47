"""Evaluate a run's best checkpoint, its test predictions for plots, and plain result tables."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import open_dataset
from mlpl.schemas.errors import InputError


def load_run_model(run: Path):
    """(TrainCfg, model with best weights, dataset) of a run folder."""
    from mlpl.stages.train.config import TrainCfg
    from mlpl.stages.train.models import create_classifier
    from safetensors.torch import load_file

    cfg_path = Path(run) / run_schema.CONFIG_TOML
    weights = Path(run) / run_schema.BEST_WEIGHTS
    for p in (cfg_path, weights):
        if not p.exists():
            raise InputError(f"{p}: missing; expected a run folder written by `mlpl train`")
    cfg = TrainCfg(**tomllib.loads(cfg_path.read_text()))
    ds = open_dataset(Path(cfg.dataset))
    model, _ = create_classifier(cfg.backbone, ds.meta.num_classes, pretrained=False, head=cfg.head,
                                 head_params=cfg.head_params, family=cfg.family)
    model.load_state_dict(load_file(str(weights)))
    return cfg, model, ds


def evaluate_run(run: Path, split: str, threshold: float | None = None) -> dict[str, Any]:
    import torch
    from mlpl.stages.evaluate.metrics import evaluate_scores
    from mlpl.stages.train.loop import predict
    from mlpl.stages.train.stream import StreamCfg

    if split not in ("val", "test"):
        raise InputError(f"--split: {split!r}; expected val or test")
    cfg, model, ds = load_run_model(run)
    if not ds.meta.splits.get(split):
        raise InputError(f"--split: dataset {ds.meta.name!r} has no {split} rows")
    stream = StreamCfg(image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers)
    _, probs, full = predict(model, ds, split, stream, torch.device("cpu"))
    t = cfg.threshold if threshold is None else threshold
    metrics = {k: float(v) for k, v in evaluate_scores(probs, full, threshold=t).items()}
    return {"run": str(run), "split": split, "threshold": t, "method": cfg.method, "metrics": metrics}


def test_predictions(run: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(probabilities, full labels) of a run's test split: the ones the run saved, else predicted from its best
    weights; None when its dataset has no test split."""
    import torch
    from mlpl.stages.train.loop import predict
    from mlpl.stages.train.stream import StreamCfg

    saved = run_schema.read_predictions(Path(run), "test")
    if saved is not None:
        return saved
    cfg, model, ds = load_run_model(Path(run))
    if not ds.meta.splits.get("test"):
        return None
    stream = StreamCfg(image_size=cfg.image_size, batch_size=64, workers=cfg.workers)
    _, probs, full = predict(model, ds, "test", stream, torch.device("cpu"))
    return probs, full


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A plain-text table (also valid Markdown) of dicts; numbers with 2 decimals (hamming with 4)."""
    columns = columns or tuple(rows[0].keys())

    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float) and v != v:  # NaN: not applicable (e.g. no pseudo-labels)
            return "—"
        if isinstance(v, float):
            return f"{v:.4f}" if k.startswith("hamming") else f"{v:.2f}"
        return str(v)

    cells = [[fmt(c, r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])
