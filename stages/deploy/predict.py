"""`mlpl predict`: a run's model over image files in batches, with progress, unreadable images counted, and
the predictions written atomically as CSV, JSONL or Parquet (chosen by the output's extension).

Images are decoded and resized in DataLoader workers while the main process runs the model, so the model
waits on decoding only when decoding is slower than the forward pass.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.deploy.model import LoadedRun, Predictions, load_pixels
from mlpl.stages.pixels import decode_jpegs, decoded_ahead, device_decodable, pack_bytes, unpack_bytes

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
ProgressFn = Callable[[str, int, int], None]


def check_output(path: Path) -> str:
    """The output format by extension, checked before any work."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {path}: expected a file ending in one of {list(OUTPUT_SUFFIXES)}")
    if not Path(path).parent.is_dir():
        raise InputError(f"--out {path}: the folder {Path(path).parent} does not exist")
    return suffix.lstrip(".")


def check_decode(decode: str) -> None:
    """`--decode` is one of the stream's decoding places (`Decode`: workers or device)."""
    from mlpl.stages.train.config import Decode

    if decode not in typing.get_args(Decode):
        raise InputError(f"--decode {decode!r}: expected {' or '.join(typing.get_args(Decode))}")


class ImageFiles(torch.utils.data.Dataset):
    """Image i → (i, uint8 [3, S, S], "") or (i, empty, reason) when it cannot be read; with `jpeg_bytes`, a
    JPEG the device can decode comes as (i, its bytes, JPEG) instead, for `decode_jpegs` in the main process."""

    def __init__(self, paths: list[Path], size: int, interpolation: str, jpeg_bytes: bool = False) -> None:
        self.paths, self.size, self.interpolation, self.jpeg_bytes = paths, size, interpolation, jpeg_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | bytes, str]:
        from mlpl.schemas.images import DECODE_ERRORS

        try:
            data = self.paths[i].read_bytes()
            if self.jpeg_bytes and device_decodable(data):
                return i, data, JPEG
            return i, load_pixels(data, self.size, self.interpolation), ""
        except (*DECODE_ERRORS, KeyError) as e:  # OSError covers a missing or unreadable file
            return i, torch.empty(0, dtype=torch.uint8), f"{e.__class__.__name__}: {e}"


JPEG = "jpeg"  # the reason field of an image that travels as bytes


def collate_readable(items: list[tuple[int, torch.Tensor | bytes, str]]) -> dict[str, Any]:
    good = [(i, x) for i, x, err in items if not err]
    jpegs = [(i, x) for i, x, err in items if err == JPEG]
    out = {"index": torch.tensor([i for i, _ in good], dtype=torch.long),
           "images": torch.stack([x for _, x in good]) if good else torch.empty(0, dtype=torch.uint8),
           "errors": [(i, err) for i, _, err in items if err and err != JPEG]}
    if jpegs:
        out["jpeg_index"] = torch.tensor([i for i, _ in jpegs], dtype=torch.long)
        out["jpeg"], out["jpeg_offsets"] = pack_bytes([x for _, x in jpegs])
    return out


def _decode_jpegs_of(batch: dict[str, Any], loaded: LoadedRun) -> dict[str, Any]:
    """The batch with its JPEG bytes decoded on the run's device and joined to its images (or its errors)."""
    decoded = decode_jpegs(unpack_bytes(batch.pop("jpeg"), batch.pop("jpeg_offsets")), loaded.device,
                           loaded.meta.image_size, loaded.meta.interpolation)
    index = batch.pop("jpeg_index").tolist()
    good = [(i, x) for i, x in zip(index, decoded) if x is not None]
    batch["errors"] += [(i, f"not a decodable image on {loaded.device}") for i, x in zip(index, decoded) if x is None]
    if good:
        images = [batch["images"].to(loaded.device)] if len(batch["index"]) else []
        batch["images"] = torch.cat([*images, torch.stack([x for _, x in good])])
        batch["index"] = torch.cat([batch["index"], torch.tensor([i for i, _ in good], dtype=torch.long)])
    return batch


def predict_files(loaded: LoadedRun, paths: list[Path], *, batch_size: int = 32, workers: int | None = None,
                  threshold: float | None = None, top_k: int | None = None,
                  progress: ProgressFn | None = None, decode: str = "workers") -> Predictions:
    """Probabilities of every readable image of `paths` (in order); the others are listed with the reason.

    decode: 'workers' (the DataLoader workers decode and resize) or 'device' (JPEGs are decoded and resized on
    the run's device, nvJPEG on a GPU; other formats stay with the workers).
    """
    check_decode(decode)
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 1) - 1))
    data = ImageFiles(paths, loaded.meta.image_size, loaded.meta.interpolation, jpeg_bytes=decode == "device")
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_readable, prefetch_factor=4 if workers else None)
    probs = np.zeros((len(paths), len(loaded.classes)), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    unreadable: list[tuple[str, str]] = []
    done = 0
    batches = iter(loader) if decode == "workers" else decoded_ahead(loader, lambda b: _decode_jpegs_of(b, loaded))
    for batch in batches:
        if len(batch["index"]):
            probs[batch["index"].numpy()] = loaded.probabilities(batch["images"])
            ok[batch["index"].numpy()] = True
        for i, err in batch["errors"]:
            log.warning("%s: unreadable (%s); skipped", paths[i], err)
            unreadable.append((str(paths[i]), err))
        done += len(batch["index"]) + len(batch["errors"])
        if progress is not None:
            progress("predict", done, len(paths))
    C = len(loaded.classes)
    thresholds = loaded.meta.class_thresholds() if threshold is None else [threshold] * C
    return Predictions([str(p) for p, keep in zip(paths, ok) if keep], probs[ok], loaded.classes, thresholds,
                       top_k, unreadable)


def _table(pred: Predictions):
    import pyarrow as pa

    columns = {"image": pa.array(pred.images, type=pa.string()),
               "labels": pa.array(pred.labels, type=pa.list_(pa.string()))}
    for c, name in enumerate(pred.classes):
        columns[f"p_{name}"] = pa.array(pred.probabilities[:, c], type=pa.float32())
    return pa.table(columns)


def write_predictions(path: Path, pred: Predictions, meta: dict[str, Any]) -> Path:
    """Write `pred` to `path` (CSV, JSONL or Parquet by extension) atomically: a temporary file, then a rename.

    CSV: `image`, `labels` (names joined with `|`), then `p_<class>` per class. JSONL: one object per image with
    `image`, `labels` (a list) and `probabilities` ({class: p}). Parquet: the CSV's columns with `labels` as a
    list, and `meta` (classes, thresholds, run) as JSON in the schema metadata under `mlpl.predictions`.
    """
    kind = check_output(path)
    tmp = Path(f"{path}.tmp")
    try:
        if kind == "csv":
            import pyarrow as pa
            import pyarrow.csv as pcsv

            table = _table(pred)
            joined = pa.array(["|".join(x) for x in pred.labels], type=pa.string())
            pcsv.write_csv(table.set_column(1, "labels", joined), tmp)
        elif kind == "jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for i, (image, labels) in enumerate(zip(pred.images, pred.labels)):
                    probs = {name: round(float(p), 6) for name, p in zip(pred.classes, pred.probabilities[i])}
                    fh.write(json.dumps({"image": image, "labels": labels, "probabilities": probs}) + "\n")
        else:
            import pyarrow.parquet as pq

            table = _table(pred)
            pq.write_table(table.replace_schema_metadata({"mlpl.predictions": json.dumps(meta)}), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return Path(path)
