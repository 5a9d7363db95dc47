"""Helpers for the converter tests: tiny real images and text files written in a source layout's exact form."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image


def tiny_image(path: Path, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """Write an 8×6 image whose colour depends on `seed`; return its bytes (what a shard must hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed + 20) % 256)).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def write_lines(path: Path, lines: Iterable[str], crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    path.write_bytes("".join(f"{line}{end}" for line in lines).encode())
    return path


def shard_bytes(root: Path) -> dict[str, bytes]:
    """key → image bytes of a prepared dataset, read back from its shards."""
    import tarfile

    from mlpl.schemas.dataset import open_dataset

    ds = open_dataset(root)
    out: dict[str, bytes] = {}
    for entry in ds.shards:
        with tarfile.open(root / "shards" / entry.name) as tar:
            for member in tar.getmembers():
                stem, ext = member.name.split(".", 1)
                if ext != "row":
                    out[ds.labels.key[int(stem)]] = tar.extractfile(member).read()
    return out


def labels_by_key(root: Path) -> dict[str, tuple[str, ...]]:
    """key → class names of a prepared dataset."""
    from mlpl.schemas.dataset import read_labels

    table = read_labels(root / "labels.parquet")
    return {k: tuple(table.classes[i] for i in lbl) for k, lbl in zip(table.key, table.labels)}


def official_train_keys(root: Path) -> list[str]:
    """Keys of train ∪ val in source order (the order of the source's official train split)."""
    import numpy as np
    from mlpl.schemas.dataset import read_labels

    table = read_labels(root / "labels.parquet")
    rows = np.flatnonzero(np.isin(table.split, ("train", "val")))
    return [table.key[r] for r in rows[np.argsort(table.source_index[rows], kind="stable")]]


def split_keys(root: Path, split: str) -> list[str]:
    from mlpl.schemas.dataset import read_labels

    table = read_labels(root / "labels.parquet")
    return [k for k, s in zip(table.key, table.split) if s == split]
