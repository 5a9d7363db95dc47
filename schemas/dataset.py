"""The prepared-dataset contract: `dataset.json`, `labels.parquet`, `shards/` (`observations/`: observations.py).

Full labels may be unknown: a row of the train split of a user's own data often has only the weak labels
its owner really holds. `labels.parquet` (version 2) says so with a null `labels` cell, which is not the
same as an empty list (known to hold none of the classes); version 1 files (every row known) stay readable.

Row order: the rows of each split are contiguous (train, then val, then test), each split in the
source's own order. A split therefore starts a new shard, so every shard covers a contiguous row
range and the pseudo-label store (which covers the train split) can be chunked by whole shards.
`source_index` keeps the position of a row in its source split file (the official train split is
`train` ∪ `val`), which is the order the observation regimes of docs/methods.md §1.2–1.4 are drawn in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import SPLITS
from mlpl.schemas.observations import (  # noqa: F401  (the contract's parts, importable from here too)
    OBSERVATIONS_DIR,
    Observations,
    list_column,
    list_regimes,
    observations_path,
    read_observations,
    write_observations,
)
from mlpl.schemas.shards import (  # noqa: F401  (the contract's parts, importable from here too)
    SHARDS_DIR,
    SHARDS_INFO,
    ShardEntry,
    read_shards_info,
    write_shards_info,
)
from mlpl.schemas.tempdirs import make_temp_beside

DATASET_SCHEMA = "mlpl.dataset"
DATASET_SCHEMA_VERSION = 2
READABLE_DATASET_VERSIONS = (1, 2)  # 1: before unknown full labels, family and expected positives
LABELS_SCHEMA_VERSION = 2  # 2: a null `labels` cell means the row's full labels are unknown

DATASET_JSON = "dataset.json"
LABELS_PARQUET = "labels.parquet"

LABELS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("split", pa.string()),
        ("source_index", pa.int64()),
        ("labels", pa.list_(pa.int16())),
        ("shard", pa.int32()),
    ]
)


def row_key(row: int) -> str:
    """WebDataset sample key of a row: zero-padded, no dots."""
    return f"{row:09d}"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class DatasetMeta:
    """Contents of `dataset.json`."""

    name: str
    classes: tuple[str, ...]
    splits: dict[str, int]
    fingerprint: str
    image_ext: str
    rows_per_shard: int
    regimes: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)
    family: str = ""  # hyperparameter family ("" in version 1 files: derived from `name`)
    expected_positives: float | None = None  # m measured on this dataset (generic family), see `m_source`
    m_source: str = ""  # how `expected_positives` was obtained, in words
    schema: str = DATASET_SCHEMA
    version: int = DATASET_SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_rows(self) -> int:
        return sum(self.splits.values())

    def split_range(self, split: str) -> tuple[int, int]:
        """[start, stop) rows of a split (splits are contiguous, in SPLITS order)."""
        start = 0
        for name in SPLITS:
            if name == split:
                return start, start + self.splits.get(name, 0)
            start += self.splits.get(name, 0)
        raise InputError(f"unknown split {split!r}; expected one of {list(SPLITS)}")

    def to_json(self) -> str:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["regimes"] = list(self.regimes)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> DatasetMeta:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: not found; expected a prepared dataset (run `mlpl prepare`)") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
        if d.get("schema") != DATASET_SCHEMA:
            raise InputError(f"{path}: schema is {d.get('schema')!r}, expected {DATASET_SCHEMA!r}")
        if d.get("version") not in READABLE_DATASET_VERSIONS:
            raise InputError(
                f"{path}: dataset schema version {d.get('version')}, this mlpl reads versions "
                f"{list(READABLE_DATASET_VERSIONS)}; prepare the dataset again"
            )
        try:
            d["classes"] = tuple(d["classes"])
            d["regimes"] = tuple(d.get("regimes", ()))
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise InputError(f"{path}: malformed dataset.json ({e})") from None


class UnknownFullLabels(InputError):
    """Full labels were asked for rows whose full labels are unknown (a user's own weakly labelled images)."""


@dataclass(frozen=True)
class LabelsTable:
    """`labels.parquet` as arrays. `labels[i]` is an int16 array of class indices of row i.

    `known[i]` is False where row i's full labels are unknown (then `labels[i]` is empty and means nothing);
    None means every row's full labels are known.
    """

    row: np.ndarray
    key: list[str]
    split: np.ndarray
    source_index: np.ndarray
    labels: list[np.ndarray]
    shard: np.ndarray
    classes: tuple[str, ...]
    known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.row)

    def known_of(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Whether each row's full labels are known (bool [n])."""
        idx = np.arange(len(self.row)) if rows is None else np.asarray(rows, dtype=np.int64)
        return np.ones(len(idx), dtype=bool) if self.known is None else np.asarray(self.known, dtype=bool)[idx]

    def all_known(self, rows: np.ndarray | None = None) -> bool:
        return bool(self.known_of(rows).all())

    def describe_unknown(self, rows: np.ndarray | None = None) -> str:
        """'unknown full labels for N of M rows (first: row R, key K)', or '' when every row is known."""
        idx = np.arange(len(self.row)) if rows is None else np.asarray(rows, dtype=np.int64)
        unknown = idx[~self.known_of(idx)]
        if not len(unknown):
            return ""
        first = int(unknown[0])
        return (f"unknown full labels for {len(unknown)} of {len(idx)} rows "
                f"(first: row {first}, key {self.key[first]!r})")

    def matrix(self, rows: np.ndarray | None = None, *, unknown_as_empty: bool = False) -> np.ndarray:
        """Full labels as a uint8 [n, C] matrix (1 = present).

        A row with unknown full labels raises `UnknownFullLabels` (nothing may be computed on labels that do
        not exist), unless `unknown_as_empty`, for callers that check `known_of` themselves.
        """
        idx = np.arange(len(self.row)) if rows is None else np.asarray(rows)
        if not unknown_as_empty and not self.all_known(idx):
            raise UnknownFullLabels(f"{self.describe_unknown(idx)}: full labels are needed here; this dataset "
                                    "holds only the weak labels its manifest gave for those rows")
        out = np.zeros((len(idx), len(self.classes)), dtype=np.uint8)
        for i, r in enumerate(idx):
            out[i, self.labels[r]] = 1
        return out

    def rows_of(self, split: str) -> np.ndarray:
        return self.row[self.split == split]


def dataset_fingerprint(
    rows: Sequence[int], keys: Sequence[str], splits: Sequence[str], labels: Sequence[np.ndarray],
    known: np.ndarray | None = None,
) -> str:
    """Hash of the row → (key, split, labels) table; the store records it to refuse a mismatched dataset.

    Unknown full labels hash as `?` (known rows hash as before, so version 1 fingerprints are unchanged).
    """
    h = hashlib.sha256()
    known = np.ones(len(rows), dtype=bool) if known is None else np.asarray(known, dtype=bool)
    for r, k, s, y, ok in zip(rows, keys, splits, labels, known):
        text = ','.join(map(str, np.asarray(y).tolist())) if ok else "?"
        h.update(f"{int(r)}\t{k}\t{s}\t{text}\n".encode())
    return h.hexdigest()[:32]


def table_fingerprint(table: LabelsTable) -> str:
    return dataset_fingerprint(table.row, table.key, table.split, table.labels, table.known)


def write_labels(path: Path, table: LabelsTable) -> None:
    arrays = [
        pa.array(np.asarray(table.row, dtype=np.int64)),
        pa.array(list(table.key), type=pa.string()),
        pa.array([str(s) for s in table.split], type=pa.string()),
        pa.array(np.asarray(table.source_index, dtype=np.int64)),
        pa.array([np.asarray(x, dtype=np.int16) if ok else None for x, ok in zip(table.labels, table.known_of())],
                 type=pa.list_(pa.int16())),
        pa.array(np.asarray(table.shard, dtype=np.int32)),
    ]
    meta = {b"mlpl.classes": json.dumps(list(table.classes)).encode(),
            b"mlpl.version": str(LABELS_SCHEMA_VERSION).encode()}
    pq.write_table(pa.Table.from_arrays(arrays, schema=LABELS_SCHEMA.with_metadata(meta)), path)


def read_labels(path: Path) -> LabelsTable:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found; expected labels.parquet of a prepared dataset")
    try:
        t = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e}); expected labels.parquet of a prepared "
                         "dataset") from None
    missing = [f.name for f in LABELS_SCHEMA if f.name not in t.schema.names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; expected {LABELS_SCHEMA.names}")
    for f in LABELS_SCHEMA:
        if t.schema.field(f.name).type != f.type:
            try:
                t = t.set_column(t.schema.get_field_index(f.name), f.name, t.column(f.name).cast(f.type))
            except (pa.ArrowException, ValueError):
                raise InputError(f"{path}: column {f.name!r} is {t.schema.field(f.name).type}; expected "
                                 f"{f.type}") from None
    meta = t.schema.metadata or {}
    if b"mlpl.classes" not in meta:
        raise InputError(f"{path}: no class names in the schema metadata (key 'mlpl.classes')")
    version = int(meta.get(b"mlpl.version", b"1"))
    if version > LABELS_SCHEMA_VERSION:
        raise InputError(f"{path}: labels schema version {version}, this mlpl reads up to {LABELS_SCHEMA_VERSION}")
    column = t.column("labels")
    known = np.ones(len(t), dtype=bool) if column.null_count == 0 else ~column.is_null().to_numpy(zero_copy_only=False)
    labels = list_column(column)
    return LabelsTable(
        row=t.column("row").to_numpy(),
        key=t.column("key").to_pylist(),
        split=np.asarray(t.column("split").to_pylist()),
        source_index=t.column("source_index").to_numpy(),
        labels=labels,
        shard=t.column("shard").to_numpy(),
        classes=tuple(json.loads(meta[b"mlpl.classes"])),
        known=None if known.all() else known,
    )


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder, opened and checked."""

    root: Path
    meta: DatasetMeta
    labels: LabelsTable
    shards: list[ShardEntry]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / SHARDS_DIR / s.name for s in self.shards if s.split == split]

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == split]

    def observations(self, regime: str) -> Observations:
        return read_observations(self.root, regime)


def open_dataset(root: Path) -> PreparedDataset:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; expected a prepared dataset (run `mlpl prepare`)")
    meta = DatasetMeta.from_json(root / DATASET_JSON)
    labels = read_labels(root / LABELS_PARQUET)
    check_labels_match_meta(root, meta, labels)
    return PreparedDataset(root, meta, labels, read_shards_info(root))


def check_labels_match_meta(root: Path, meta: DatasetMeta, labels: LabelsTable) -> None:
    """labels.parquet is the table dataset.json describes: split sizes, classes and fingerprint agree.

    Every stage opens a dataset through this, so a table edited after `mlpl prepare` (or a dataset.json
    edited by hand) is refused before any work, not trained on with another table's pseudo-labels.
    """
    counts = {name: int((labels.split == name).sum()) for name in SPLITS}
    listed = {name: int(meta.splits.get(name, 0)) for name in SPLITS}
    if counts != listed or sum(listed.values()) != len(labels):
        raise InputError(f"{root / DATASET_JSON}: splits {meta.splits} do not match labels.parquet "
                         f"({counts}, {len(labels)} rows); the dataset was edited after `mlpl prepare`; "
                         "prepare it again")
    if labels.classes != meta.classes:
        renamed = [f"{a!r} → {b!r}" for a, b in zip(meta.classes, labels.classes) if a != b]
        what = f"renamed {', '.join(renamed[:3])}" if renamed else f"{len(labels.classes)} vs {len(meta.classes)}"
        raise InputError(f"{root / LABELS_PARQUET}: classes differ from dataset.json ({what}); prepare it again")
    fingerprint = table_fingerprint(labels)
    if fingerprint != meta.fingerprint:
        raise InputError(f"{root / LABELS_PARQUET}: fingerprint {fingerprint} differs from {meta.fingerprint} in "
                         "dataset.json; labels.parquet was edited after `mlpl prepare` (stores built for it no "
                         "longer match); prepare the dataset again")


def validate(root: Path) -> PreparedDataset:
    """Check every part of a prepared dataset against the contract; raise InputError naming the problem."""
    ds = open_dataset(root)
    meta, lab = ds.meta, ds.labels
    n = len(lab)
    if not np.array_equal(lab.row, np.arange(n)):
        raise InputError(f"{root / LABELS_PARQUET}: rows must be dense 0..N-1 in order")
    for s in set(lab.split.tolist()) - set(SPLITS):
        raise InputError(f"{root / LABELS_PARQUET}: unknown split {s!r}; expected {list(SPLITS)}")
    for name in SPLITS:
        start, stop = meta.split_range(name)
        got = int((lab.split == name).sum())
        if got != meta.splits.get(name, 0) or not np.all(lab.split[start:stop] == name):
            raise InputError(f"{root}: split {name!r} must be {meta.splits.get(name, 0)} contiguous rows, found {got}")
    C = meta.num_classes
    for i, lbl in enumerate(lab.labels):
        if len(lbl) and (lbl.min() < 0 or lbl.max() >= C or len(np.unique(lbl)) != len(lbl)):
            raise InputError(f"{root / LABELS_PARQUET}: row {i} has labels {lbl.tolist()}; "
                             f"expected distinct ints in [0, {C})")
    for name in ("val", "test"):
        start, stop = meta.split_range(name)
        if not lab.all_known(np.arange(start, stop)):
            raise InputError(f"{root / LABELS_PARQUET}: {name} split: {lab.describe_unknown(np.arange(start, stop))}; "
                             "val and test rows need full labels")
    covered = 0
    for idx, s in enumerate(ds.shards):
        path = root / SHARDS_DIR / s.name
        if not path.exists():
            raise InputError(f"{path}: shard listed in _info.json is missing")
        rows = lab.row[s.first_row : s.first_row + s.num_samples]
        if s.first_row != covered or not np.all(lab.shard[rows] == idx) or not np.all(lab.split[rows] == s.split):
            raise InputError(f"{path}: rows {s.first_row}..+{s.num_samples} do not match labels.parquet")
        if s.num_samples > meta.rows_per_shard:
            raise InputError(f"{path}: {s.num_samples} samples exceed rows_per_shard={meta.rows_per_shard}")
        covered += s.num_samples
    if covered != n:
        raise InputError(f"{root / SHARDS_DIR / SHARDS_INFO}: shards cover {covered} rows, dataset has {n}")
    from mlpl.schemas.shards import ShardCheck, scan_shard

    for s in ds.shards:  # every member of every shard, against _info.json (headers only: no image is read)
        path = str(root / SHARDS_DIR / s.name)
        for _ in ShardCheck({path: (s.first_row, s.num_samples)})(scan_shard(path)):
            pass
    train_rows = lab.rows_of("train")
    for regime in list_regimes(root):
        obs = read_observations(root, regime)
        if not np.array_equal(np.sort(obs.row), train_rows):
            raise InputError(f"{observations_path(root, regime)}: rows must be exactly the train split")
        for p, q in zip(obs.positives, obs.negatives):
            if len(np.intersect1d(p, q)):
                raise InputError(f"{observations_path(root, regime)}: a class is both observed positive and negative")
    return ds


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; rename it to `out` only if the block succeeds."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another --out or pass --overwrite")
    tmp = make_temp_beside(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
