"""The evaluation pass: a model's probabilities over a split; a finished run's best checkpoint evaluated again."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import PreparedDataset, open_dataset
from mlpl.schemas.errors import InputError
from mlpl.stages.collectives import gather_rows, sum_over_ranks
from mlpl.stages.evaluate.metrics import evaluate_scores
from mlpl.stages.runtime import resolve_workers
from mlpl.stages.train.config import TrainCfg
from mlpl.stages.train.models import Classifier, create_classifier
from mlpl.stages.train.stream import StreamCfg, eval_loader, model_input


@torch.no_grad()
def predict(model: Classifier, ds: PreparedDataset, split: str, stream: StreamCfg, device: torch.device,
            amp: bool = False, skipped: dict[str, int] | None = None, rank: int = 0,
            world: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, probabilities [n, C], full labels [n, C]) of the rows of a split whose image decodes, ordered by
    row; the number of the others goes to `skipped[split]` (no row is ever stood in for by another). Under
    torchrun (`world` > 1, every rank calling) each rank predicts its share of the rows and every rank returns
    the whole split."""
    model.eval()
    rows, probs, full = [], [], []
    loader = eval_loader(ds, split, stream, rank, world)
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(model_input(batch, device, stream.mean, stream.std))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        rows.append(batch["row"].numpy())
        full.append(batch["full"].numpy())
    num_classes = ds.meta.num_classes
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    p = np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32)
    f = np.concatenate(full) if full else np.zeros((0, num_classes), np.int8)
    r, p, f = gather_rows(r, p, f)
    undecodable = int(sum_over_ranks(torch.tensor([loader.undecodable], dtype=torch.float64))[0])
    if skipped is not None:
        skipped[split] = undecodable
    if not len(r):
        raise InputError(f"{ds.root}: no image of the {split} split could be decoded "
                         f"({undecodable} tried); prepare the dataset again")
    return r, p, f


def split_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of docs/methods.md §2 over one split, as plain floats."""
    return {k: float(v) for k, v in evaluate_scores(scores, targets, threshold=threshold).items()}


TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainCfg))


def read_run_cfg(run: Path) -> TrainCfg:
    """The `TrainCfg` of a run folder's config.toml."""
    path = Path(run) / run_schema.CONFIG_TOML
    if not path.is_file():
        raise InputError(f"{path}: missing; expected a run folder written by `mlpl train`")
    try:
        config = tomllib.loads(path.read_text())
        # [resolved] and the record's other tables ([run], [dataset_info], [store_info]) describe the run; the
        # settings are the TrainCfg fields, from which the resolved configs are rebuilt
        return TrainCfg(**{k: v for k, v in config.items() if k in TRAIN_FIELDS})
    except (tomllib.TOMLDecodeError, TypeError) as e:
        raise InputError(f"{path}: not a run configuration ({e})") from None


def run_dataset(run: Path, cfg: TrainCfg, dataset: Path | None = None) -> PreparedDataset:
    """The prepared dataset a run was trained on: the absolute path it records, or `dataset` where the two were
    moved, checked to be the same dataset (its fingerprint) where the run's weights record one."""
    path = Path(dataset) if dataset is not None else Path(cfg.dataset)
    if dataset is None and not (path / "dataset.json").is_file():
        raise InputError(f"{Path(run) / run_schema.CONFIG_TOML}: the run's dataset {path} is not there (moved, or a "
                         "relative path from another directory); pass --dataset PATH")
    ds = open_dataset(path)
    weights = Path(run) / run_schema.BEST_WEIGHTS
    meta = run_schema.read_model_meta(weights) if weights.is_file() else None
    if meta is not None and meta.dataset_fingerprint and meta.dataset_fingerprint != ds.meta.fingerprint:
        raise InputError(f"--dataset {path}: fingerprint {ds.meta.fingerprint}, but run {run} was trained on "
                         f"{meta.dataset!r} with fingerprint {meta.dataset_fingerprint}; expected the same dataset")
    return ds


def load_run_model(run: Path, dataset: Path | None = None) -> tuple[TrainCfg, Classifier, PreparedDataset]:
    """(TrainCfg, model with best weights, dataset) of a run folder; `dataset` where the run's dataset moved."""
    from mlpl.schemas.state import load_weights

    cfg = read_run_cfg(run)
    weights = Path(run) / run_schema.BEST_WEIGHTS
    if not weights.exists():
        raise InputError(f"{weights}: missing; expected a run folder written by `mlpl train`")
    ds = run_dataset(run, cfg, dataset)
    model, _ = create_classifier(cfg.backbone, ds.meta.num_classes, pretrained=False, head=cfg.head,
                                 head_params=cfg.head_params, family=cfg.family, image_size=cfg.data_cfg().image_size)
    model.load_state_dict(load_weights(weights))
    return cfg, model, ds


def evaluate_run(run: Path, split: str, threshold: float | None = None,
                 dataset: Path | None = None) -> dict[str, Any]:
    """A run's best checkpoint on `split` ('val' or 'test'): its metrics at `threshold` (default: the run's)."""
    if split not in ("val", "test"):
        raise InputError(f"--split: {split!r}; expected val or test")
    cfg, model, ds = load_run_model(run, dataset)
    if not ds.meta.splits.get(split):
        raise InputError(f"--split: dataset {ds.meta.name!r} has no {split} rows")
    stream = StreamCfg.of(cfg.data_cfg(), batch_size=cfg.batch_size, workers=resolve_workers(cfg.workers))
    skipped: dict[str, int] = {}
    _, probs, full = predict(model, ds, split, stream, torch.device("cpu"), skipped=skipped)
    t = cfg.threshold if threshold is None else threshold
    return {"run": str(run), "split": split, "threshold": t, "method": cfg.method,
            "metrics": {**split_metrics(probs, full, t), "skipped_images": float(skipped[split])}}


def test_predictions(run: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(probabilities, full labels) of a run's test split: the ones the run saved, else predicted from its best
    weights; None when its dataset has no test split."""
    saved = run_schema.read_predictions(Path(run), "test")
    if saved is not None:
        return saved
    cfg, model, ds = load_run_model(Path(run))
    if not ds.meta.splits.get("test"):
        return None
    stream = StreamCfg.of(cfg.data_cfg(), batch_size=64, workers=resolve_workers(cfg.workers))
    _, probs, full = predict(model, ds, "test", stream, torch.device("cpu"))
    return probs, full
