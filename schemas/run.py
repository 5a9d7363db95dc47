"""The run-folder contract: `config.toml`, `metrics.jsonl`, `best.safetensors`, `last.pt`, `summary.json`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlpl.schemas.errors import InputError, naming_path

RUN_SCHEMA = "mlpl.run"
RUN_SCHEMA_VERSION = 1

CONFIG_TOML = "config.toml"
METRICS_JSONL = "metrics.jsonl"
BEST_WEIGHTS = "best.safetensors"
LAST_STATE = "last.pt"
SUMMARY_JSON = "summary.json"
PREDICTIONS_NPZ = "predictions-{split}.npz"
SWEEP_INDEX = "sweep.json"  # in a sweep's folder: its runs in plan order, with their settings

METRIC_KEYS = ("map", "cf1", "of1", "macro_f1", "hamming")

MODEL_META_KEY = "mlpl.model"  # the key of `ModelMeta` in best.safetensors' and exported models' metadata
MODEL_META_VERSION = 1
MODEL_INPUT = ("uint8 RGB images [B, 3, S, S] (S = image_size): decoded with EXIF orientation ignored and resized "
               "to S x S without keeping the aspect ratio ('interpolation'); the model scales them to [0, 1], "
               "normalises with mean/std and returns sigmoid probabilities [B, C]")


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model needs beside its weights to be used on new images (stored with the weights).

    `thresholds` holds one threshold per class where they were chosen per class (`--thresholds val-f1`),
    else None and `threshold` applies to every class.
    """

    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    backbone: str
    head: str
    head_params: dict[str, Any]
    family: str
    threshold: float
    thresholds: tuple[float, ...] | None = None
    threshold_rule: str = "the run's threshold"
    method: str = ""
    dataset: str = ""
    dataset_fingerprint: str = ""
    input: str = MODEL_INPUT
    version: int = MODEL_META_VERSION

    def class_thresholds(self) -> list[float]:
        return list(self.thresholds) if self.thresholds is not None else [self.threshold] * len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelMeta:
        try:
            d = json.loads(text)
            if d.get("version") != MODEL_META_VERSION:
                raise InputError(f"{where}: model metadata version {d.get('version')}, this mlpl reads "
                                 f"{MODEL_META_VERSION}")
            for key in ("classes", "mean", "std"):
                d[key] = tuple(d[key])
            if d.get("thresholds") is not None:
                d["thresholds"] = tuple(float(t) for t in d["thresholds"])
            meta = cls(**d)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise InputError(f"{where}: malformed model metadata under {MODEL_META_KEY!r} ({e})") from None
        if meta.thresholds is not None and len(meta.thresholds) != len(meta.classes):
            raise InputError(f"{where}: {len(meta.thresholds)} thresholds for {len(meta.classes)} classes")
        return meta


@dataclass(frozen=True)
class SplitMetrics:
    map: float
    cf1: float
    of1: float
    macro_f1: float
    hamming: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    method: str
    dataset: str
    regime: str
    seed: int
    best_epoch: int
    val: SplitMetrics | None  # None: the dataset has no val split (the last epoch is kept, see `notes`)
    test: SplitMetrics | None
    epochs_run: int = 0
    pseudo_quality: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the run could not do as usual, and why
    skipped_images: dict[str, int] = field(default_factory=dict)  # per split: images that did not decode
    schema: str = RUN_SCHEMA
    version: int = RUN_SCHEMA_VERSION


def read_model_meta(weights: Path) -> ModelMeta | None:
    """The `ModelMeta` stored in a best.safetensors, or None for weights written before it was stored."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            text = (fh.metadata() or {}).get(MODEL_META_KEY)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise InputError(f"{weights}: not a readable safetensors file ({e.__class__.__name__}: {e})") from None
    return None if text is None else ModelMeta.from_json(text, str(weights))


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    with naming_path(tmp):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY_JSON, asdict(summary))


def read_summary(run_dir: Path) -> RunSummary:
    path = Path(run_dir) / SUMMARY_JSON
    if not path.exists():
        raise InputError(f"{path}: not found; expected a finished run folder (run `mlpl train`)")
    d = json.loads(path.read_text())
    if d.get("schema") != RUN_SCHEMA or d.get("version") != RUN_SCHEMA_VERSION:
        raise InputError(f"{path}: not an mlpl run summary of version {RUN_SCHEMA_VERSION}")
    d["val"] = SplitMetrics(**d["val"]) if d.get("val") else None
    d["test"] = SplitMetrics(**d["test"]) if d.get("test") else None
    return RunSummary(**d)


def write_predictions(run_dir: Path, split: str, rows: Any, probs: Any, full: Any) -> None:
    """A split's predicted probabilities (float16) and full labels, by row, for reports and plots."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS_NPZ.format(split=split)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, rows=np.asarray(rows, np.int64), probs=np.asarray(probs, np.float16),
                        full=np.asarray(full, np.uint8))
    os.replace(tmp, path)


def read_predictions(run_dir: Path, split: str) -> tuple[Any, Any] | None:
    """(probabilities [n, C] float32, full labels [n, C]) written by `write_predictions`, or None."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS_NPZ.format(split=split)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["probs"].astype(np.float32), f["full"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: unreadable predictions file ({e}); delete it to predict again") from None


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """One line per epoch and split: {"epoch", "split", metric...}."""
    path = Path(run_dir) / METRICS_JSONL
    with naming_path(path), open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _parse_metrics(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record or None when the line is not a JSON object with an int epoch) of `path`."""
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            record = None
        yield lineno, record


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_JSONL
    if not path.exists():
        return []
    records = []
    for lineno, record in _parse_metrics(path):
        if record is None:
            raise InputError(f"{path}:{lineno}: not a metrics record (a JSON object with an integer 'epoch'); "
                             "the file was cut or edited")
        records.append(record)
    return records


def keep_metrics_until(run_dir: Path, epoch: int) -> None:
    """Rewrite metrics.jsonl with the train/val lines of epochs ≤ `epoch` only (atomically).

    A resumed run starts after the last epoch its `last.pt` holds; lines a killed run appended after that
    (a repeated epoch, a line cut by the kill, a test line) would otherwise be there twice.
    """
    path = Path(run_dir) / METRICS_JSONL
    if not path.exists():
        return
    kept = [json.dumps(r, sort_keys=True) + "\n" for _, r in _parse_metrics(path)
            if r is not None and r["epoch"] <= epoch and r.get("split") in ("train", "val")]
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def validate(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    for name in (CONFIG_TOML, METRICS_JSONL, SUMMARY_JSON):
        if not (run_dir / name).exists():
            raise InputError(f"{run_dir / name}: missing from the run folder")
    summary = read_summary(run_dir)
    read_metrics(run_dir)  # every line a record
    for key in METRIC_KEYS if summary.val is not None else ():
        if not isinstance(getattr(summary.val, key), float | int):
            raise InputError(f"{run_dir / SUMMARY_JSON}: val.{key} is not a number")
    return summary


def dump_toml(d: dict[str, Any]) -> str:
    """A small TOML writer for configs: scalars and lists, nested tables as `[a.b]` (None values left out)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else
                                                                       ("inf" if v > 0 else "-inf"))
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v if x is not None) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def key(k: str) -> str:
        return k if k and all(c.isalnum() or c in "_-" for c in k) else val(k)

    def table(prefix: str, t: dict[str, Any]) -> list[str]:
        lines = [f"{key(k)} = {val(v)}" for k, v in t.items() if v is not None and not isinstance(v, dict)]
        for k, v in t.items():
            if isinstance(v, dict):
                name = f"{prefix}.{key(k)}" if prefix else key(k)
                lines += ["", f"[{name}]"] + table(name, v)
        return lines

    return "\n".join(table("", d)) + "\n"


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run's nested config tables as `section.key` → value (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
