"""The pseudo-label store contract: a Zarr v3 group of cached teacher similarities (stage one → stage two).

Arrays: `sims` float16 [S, N, V, C] raw cosines (S augment seeds, N = rows of the train split,
V = 1 + g² views: global first, then tiles row-major), chunked by (1, rows_per_chunk, V, C) so one
chunk is one dataset shard; `text_emb` float32 [C, D]; `done` uint8 [S, n_chunks] completion marks
(one element per chunk, so ranks never write the same chunk); optional `img_emb` float16 [S, N, V, D].
A row whose image could not be decoded holds NaN and is listed in the attribute `corrupt_rows`.
`checksums` uint64 [S, n_chunks] holds a checksum per written chunk (stores written before it have none),
so `validate` finds a chunk that was damaged or edited and clears its done mark for a rerun to redo it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError

STORE_SCHEMA = "mlpl.store"
STORE_SCHEMA_VERSION = 1
CHECKSUMS = "checksums"  # uint64 [S, n_chunks]: per chunk, the first 8 bytes of the sha256 of its float16 values


def chunk_checksum(sims: np.ndarray) -> int:
    """Checksum of one chunk of `sims` (float16 [rows, V, C]) as the store records it."""
    data = np.ascontiguousarray(sims, dtype=np.float16).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


@dataclass(frozen=True)
class ViewAttrs:
    """The view settings a store was built with (stage one's `ViewCfg`, as recorded in the attributes)."""

    grid: int
    overlap: float = 0.0
    flip: bool = False
    normalize: str = "clip"
    image_size: int = 0
    interpolation: str = ""
    weak_aug: bool = False
    weak_aug_p: float = 0.0
    order: str = "global, then tiles row-major"
    resize: str = ""
    recorded: dict[str, Any] = field(default_factory=dict, compare=False)  # every key, as stage one wrote it

    @property
    def num_views(self) -> int:
        """V = 1 + g²: the global view, then the tiles row-major."""
        return 1 + self.grid**2

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "store") -> ViewAttrs:
        grid = d.get("grid")
        if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
            raise InputError(f"{where}: malformed view attributes {d!r}; expected an integer grid ≥ 1")
        known = set(cls.__dataclass_fields__) - {"recorded"}
        return cls(**{k: v for k, v in d.items() if k in known}, recorded=dict(d))


@dataclass(frozen=True)
class TeacherAttrs:
    """What a store says of its teacher: the model, its logit scale (if it has one), and everything recorded."""

    model: str | None
    logit_scale: float | None
    recorded: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherAttrs:
        scale = d.get("logit_scale")
        return cls(model=d.get("model", d.get("arch")), logit_scale=None if scale is None else float(scale),
                   recorded=dict(d))


@dataclass(frozen=True)
class StoreAttrs:
    """Everything that changes the teacher's input or output (stage-one parameters)."""

    dataset_fingerprint: str
    dataset_name: str
    classes: tuple[str, ...]
    num_rows: int
    rows_per_chunk: int
    seeds: tuple[int, ...]
    teacher: dict[str, Any]
    views: dict[str, Any]
    embed_dim: int
    keep_embeddings: bool = False
    schema: str = STORE_SCHEMA
    version: int = STORE_SCHEMA_VERSION

    @property
    def view_attrs(self) -> ViewAttrs:
        """The recorded view settings, typed."""
        return ViewAttrs.from_dict(self.views)

    @property
    def teacher_attrs(self) -> TeacherAttrs:
        """The recorded teacher, typed."""
        return TeacherAttrs.from_dict(self.teacher)

    @property
    def num_views(self) -> int:
        return self.view_attrs.num_views

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.rows_per_chunk)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "store") -> StoreAttrs:
        if d.get("schema") != STORE_SCHEMA:
            raise InputError(f"{where}: not an mlpl pseudo-label store (schema {d.get('schema')!r})")
        if d.get("version") != STORE_SCHEMA_VERSION:
            raise InputError(
                f"{where}: store schema version {d.get('version')}, this mlpl reads {STORE_SCHEMA_VERSION}; "
                "rebuild it with `mlpl precompute-clip`"
            )
        known = set(cls.__dataclass_fields__)
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["classes"] = tuple(kw["classes"])
            kw["seeds"] = tuple(kw["seeds"])
            return cls(**kw)
        except (KeyError, TypeError) as e:
            raise InputError(f"{where}: malformed store attributes ({e})") from None


@dataclass
class Store:
    """An opened store. `corrupt_rows` is read from the attributes when opened."""

    path: Path
    attrs: StoreAttrs
    group: Any
    corrupt_rows: list[int] = field(default_factory=list)

    @property
    def sims(self) -> Any:
        return self.group["sims"]

    @property
    def done(self) -> Any:
        return self.group["done"]

    def text_emb(self) -> np.ndarray:
        return np.asarray(self.group["text_emb"][...])

    def done_matrix(self) -> np.ndarray:
        return np.asarray(self.done[...]).astype(bool)

    def is_complete(self) -> bool:
        return bool(self.done_matrix().all())

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.attrs.rows_per_chunk
        return start, min(start + self.attrs.rows_per_chunk, self.attrs.num_rows)

    def seed_chunks(self, seed_index: int) -> SeedChunks:
        """The reader of augment seed `seed_index`'s similarities, chunk by chunk."""
        return SeedChunks(self.path, seed_index, self.attrs.rows_per_chunk, self.attrs.num_rows, self.sims)

    def read_chunk(self, seed_index: int, chunk: int) -> np.ndarray:
        """Similarities of one whole chunk: float16 [rows, V, C] (one Zarr chunk read)."""
        return self.seed_chunks(seed_index).read(chunk)

    def record_checksum(self, seed_index: int, chunk: int) -> None:
        """Record the checksum of a written chunk (read back as stored), before it is marked done."""
        if CHECKSUMS in self.group:
            self.group[CHECKSUMS][seed_index, chunk] = np.uint64(chunk_checksum(self.read_chunk(seed_index, chunk)))

    def mark_corrupt(self, rows: list[int]) -> None:
        """Record rows whose image could not be decoded (kept sorted and unique)."""
        merged = sorted(set(self.corrupt_rows) | {int(r) for r in rows})
        if merged != self.corrupt_rows:
            self.corrupt_rows = merged
            self.group.attrs["corrupt_rows"] = merged


class SeedChunks:
    """The one way stage two reads similarities: one augment seed's, one whole chunk (= one shard) at a time.

    Picklable (DataLoader workers and label states get it): the Zarr array is opened on first use in the
    process that reads, never pickled. Iterating gives (rows, float32 sims) of every chunk in order.

    Args:
        path: the store folder.
        seed_index: index into the store's augment seeds.
        rows_per_chunk: the store's rows per chunk (its attributes', never the dataset's).
        num_rows: rows of the store (the train split).
        array: an already open `sims` array (the store's own), or None.
    """

    def __init__(self, path: Path, seed_index: int, rows_per_chunk: int, num_rows: int, array: Any = None) -> None:
        self.path, self.seed_index = Path(path), int(seed_index)
        self.rows_per_chunk, self.num_rows = int(rows_per_chunk), int(num_rows)
        self._array = array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.rows_per_chunk)

    def read(self, chunk: int) -> np.ndarray:
        """Similarities of one whole chunk: float16 [rows, V, C] (one Zarr chunk read)."""
        if self._array is None:
            import zarr

            self._array = zarr.open_group(str(self.path), mode="r")["sims"]
        start = chunk * self.rows_per_chunk
        try:
            return np.asarray(self._array[self.seed_index, start : min(start + self.rows_per_chunk, self.num_rows)])
        except Exception as e:  # a codec's own error type (zstd, blosc) for bytes that do not decode
            raise InputError(f"{self.path}: seed {self.seed_index} chunk {chunk} does not decode "
                             f"({e.__class__.__name__}); run `mlpl validate {self.path}` (it clears the "
                             "chunk's done mark), then rerun `mlpl precompute-clip` to redo it") from None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for chunk in range(self.num_chunks):
            start = chunk * self.rows_per_chunk
            sims = self.read(chunk)
            yield np.arange(start, start + len(sims)), sims.astype(np.float32)


def create_store(path: Path, attrs: StoreAttrs, text_emb: np.ndarray) -> Store:
    """Create an empty store (all NaN, nothing done). Fails if `path` exists."""
    import zarr

    path = Path(path)
    if path.exists():
        raise InputError(f"{path}: already exists; pass the same options to resume, or choose another --out")
    C, V, S, N = len(attrs.classes), attrs.num_views, len(attrs.seeds), attrs.num_rows
    if text_emb.shape != (C, attrs.embed_dim):
        raise ValueError(f"text_emb shape {text_emb.shape}, expected {(C, attrs.embed_dim)}")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.create_array(
        "sims", shape=(S, N, V, C), chunks=(1, attrs.rows_per_chunk, V, C), dtype="float16", fill_value=np.nan
    )
    group.create_array("done", shape=(S, attrs.num_chunks), chunks=(1, 1), dtype="uint8", fill_value=0)
    group.create_array(CHECKSUMS, shape=(S, attrs.num_chunks), chunks=(1, 1), dtype="uint64", fill_value=0)
    te = group.create_array("text_emb", shape=text_emb.shape, chunks=text_emb.shape, dtype="float32")
    te[...] = text_emb.astype(np.float32)
    if attrs.keep_embeddings:
        group.create_array(
            "img_emb",
            shape=(S, N, V, attrs.embed_dim),
            chunks=(1, attrs.rows_per_chunk, V, attrs.embed_dim),
            dtype="float16",
            fill_value=np.nan,
        )
    group.attrs.update({"mlpl": attrs.to_dict(), "corrupt_rows": []})
    return Store(path, attrs, group, [])


def open_store(path: Path, mode: str = "r") -> Store:
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise InputError(f"{path}: not a pseudo-label store (no zarr.json); build one with `mlpl precompute-clip`")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        mlpl_attrs = dict(group.attrs.get("mlpl", {}))
    except (ValueError, TypeError, KeyError, OSError) as e:  # zarr reports a broken zarr.json as any of these
        raise InputError(f"{path / 'zarr.json'}: not a readable Zarr v3 group ({e.__class__.__name__}: {e}); "
                         "rebuild the store with `mlpl precompute-clip`") from None
    attrs = StoreAttrs.from_dict(mlpl_attrs, where=str(path))
    return Store(path, attrs, group, list(group.attrs.get("corrupt_rows", [])))


def check_matches_dataset(store: Store, fingerprint: str, classes: tuple[str, ...], num_train_rows: int) -> None:
    """Refuse a store built for another dataset, naming the mismatch and how to rebuild."""
    a = store.attrs
    fix = f"rebuild it with `mlpl precompute-clip --dataset <this dataset> --out {store.path}`"
    if a.dataset_fingerprint != fingerprint:
        raise InputError(
            f"{store.path}: store was built for dataset {a.dataset_name!r} with fingerprint "
            f"{a.dataset_fingerprint}, this dataset has {fingerprint}; {fix}"
        )
    if tuple(a.classes) != tuple(classes):
        changed = [f"{i}: store {x!r}, dataset {y!r}" for i, (x, y) in enumerate(zip(a.classes, classes)) if x != y]
        what = f"class {'; class '.join(changed[:3])}" if changed else f"{len(a.classes)} vs {len(classes)} classes"
        raise InputError(f"{store.path}: store classes differ from the dataset's ({what}); {fix}")
    if a.num_rows != num_train_rows:
        raise InputError(f"{store.path}: store has {a.num_rows} rows, the train split has {num_train_rows}; {fix}")


def validate(path: Path) -> Store:
    store = open_store(path)
    a = store.attrs
    shape = (len(a.seeds), a.num_rows, a.num_views, len(a.classes))
    if tuple(store.sims.shape) != shape:
        raise InputError(f"{path}: sims shape {tuple(store.sims.shape)}, attributes say {shape}")
    if tuple(store.done.shape) != (len(a.seeds), a.num_chunks):
        raise InputError(f"{path}: done shape {tuple(store.done.shape)}, expected {(len(a.seeds), a.num_chunks)}")
    problems, nan_rows = check_chunks(store)
    if problems:
        listed = "; ".join(f"seed {s} chunk {k} (rows {store.chunk_rows(k)[0]}..{store.chunk_rows(k)[1] - 1}): "
                           f"{why}" for s, k, why in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InputError(f"{path}: {len(problems)} chunk(s) damaged or changed since written ({listed}{more}); their "
                         "done marks are cleared: rerun `mlpl precompute-clip` with the same options to redo them")
    if nan_rows:
        raise InputError(f"{path}: rows {nan_rows[:10]}{' ...' if len(nan_rows) > 10 else ''} hold NaN "
                         "similarities but are not listed in corrupt_rows; the store was edited after it was written")
    return store


def check_chunks(store: Store) -> tuple[list[tuple[int, int, str]], list[int]]:
    """One read of every done chunk: (seed index, chunk, what is wrong) of each chunk that does not decode or
    whose checksum differs from the recorded one (its done mark is cleared, the store reopened writable for
    that), and the rows holding a NaN similarity that `corrupt_rows` does not list."""
    done = store.done_matrix()
    sums = np.asarray(store.group[CHECKSUMS][...]) if CHECKSUMS in store.group else None
    listed = set(store.corrupt_rows)
    problems: list[tuple[int, int, str]] = []
    nan_rows: set[int] = set()
    for s, k in zip(*np.nonzero(done)):
        try:
            sims = store.read_chunk(int(s), int(k))
        except Exception as e:  # a codec's own error type (zstd, blosc) for bytes that do not decode
            problems.append((int(s), int(k), f"does not decode ({e.__class__.__name__})"))
            continue
        if sums is not None and sums[s, k] and int(sums[s, k]) != chunk_checksum(sims):
            problems.append((int(s), int(k), "checksum differs from the recorded one"))
        start = store.chunk_rows(int(k))[0]
        nan_rows |= {start + int(i) for i in np.flatnonzero(np.isnan(sims.astype(np.float32)).any(axis=(1, 2)))}
    if problems:
        writable = open_store(store.path, mode="r+")
        for s, k, _ in problems:
            writable.done[s, k] = 0
    return problems, sorted(nan_rows - listed)


def describe(store: Store) -> dict[str, Any]:
    """A JSON-able summary for `mlpl inspect`."""
    done = store.done_matrix()
    size = sum(p.stat().st_size for p in Path(store.path).rglob("*") if p.is_file())
    return {
        "path": str(store.path),
        "attributes": json.loads(json.dumps(store.attrs.to_dict())),
        "completion": {"done_tasks": int(done.sum()), "total_tasks": int(done.size)},
        "corrupt_rows": len(store.corrupt_rows),
        "size_bytes": size,
    }
