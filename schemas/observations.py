"""The observation-regime part of the prepared-dataset contract: `observations/<regime>.parquet`.

One file per regime over the train rows: `row` int64, `positives` and `negatives` list<int16>, with the regime's
name, parameters and schema version in the file's metadata (docs/methods.md §1.2–1.4).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed

OBSERVATIONS_SCHEMA_VERSION = 1
OBSERVATIONS_DIR = "observations"

OBSERVATIONS_SCHEMA = pa.schema(
    [("row", pa.int64()), ("positives", pa.list_(pa.int16())), ("negatives", pa.list_(pa.int16()))]
)


@dataclass(frozen=True)
class Observations:
    """An observation regime over the train rows: per row, the observed positive and negative classes."""

    regime: str
    params: dict[str, Any]
    row: np.ndarray
    positives: list[np.ndarray]
    negatives: list[np.ndarray]

    def matrix(self, num_classes: int) -> np.ndarray:
        """Observed labels as an int8 [n, C] matrix of `Observed` values, in `self.row` order."""
        out = np.full((len(self.row), num_classes), int(Observed.UNKNOWN), dtype=np.int8)
        for i, (p, n) in enumerate(zip(self.positives, self.negatives)):
            out[i, n] = int(Observed.NEGATIVE)
            out[i, p] = int(Observed.POSITIVE)
        return out

    @classmethod
    def from_matrix(cls, regime: str, params: dict[str, Any], rows: np.ndarray, obs: np.ndarray) -> Observations:
        pos = [np.flatnonzero(r == Observed.POSITIVE).astype(np.int16) for r in obs]
        neg = [np.flatnonzero(r == Observed.NEGATIVE).astype(np.int16) for r in obs]
        return cls(regime, dict(params), np.asarray(rows, dtype=np.int64), pos, neg)


def observations_path(root: Path, regime: str) -> Path:
    return Path(root) / OBSERVATIONS_DIR / f"{regime}.parquet"


def write_observations(root: Path, obs: Observations) -> Path:
    path = observations_path(root, obs.regime)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [
        pa.array(np.asarray(obs.row, dtype=np.int64)),
        pa.array([np.asarray(x, dtype=np.int16) for x in obs.positives], type=pa.list_(pa.int16())),
        pa.array([np.asarray(x, dtype=np.int16) for x in obs.negatives], type=pa.list_(pa.int16())),
    ]
    meta = {
        b"mlpl.regime": obs.regime.encode(),
        b"mlpl.params": json.dumps(obs.params, sort_keys=True).encode(),
        b"mlpl.version": str(OBSERVATIONS_SCHEMA_VERSION).encode(),
    }
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_arrays(arrays, schema=OBSERVATIONS_SCHEMA.with_metadata(meta)), tmp)
    os.replace(tmp, path)
    return path


def list_column(col: pa.ChunkedArray) -> list[np.ndarray]:
    """A list<int16> column as one int16 array per row (a null cell reads as an empty array)."""
    flat = col.combine_chunks()
    offsets = flat.offsets.to_numpy()
    values = flat.values.to_numpy(zero_copy_only=False).astype(np.int16)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def list_regimes(root: Path) -> list[str]:
    d = Path(root) / OBSERVATIONS_DIR
    return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []


def read_observations(root: Path, regime: str) -> Observations:
    path = observations_path(root, regime)
    if not path.exists():
        raise InputError(
            f"{path}: no observation regime {regime!r} in this dataset; available: {list_regimes(root)} "
            f"(add one with `mlpl observe {root} --regime ...`)"
        )
    t = pq.read_table(path)
    meta = t.schema.metadata or {}
    return Observations(
        regime=meta.get(b"mlpl.regime", regime.encode()).decode(),
        params=json.loads(meta.get(b"mlpl.params", b"{}")),
        row=t.column("row").to_numpy(),
        positives=list_column(t.column("positives")),
        negatives=list_column(t.column("negatives")),
    )
