"""Write a prepared dataset: rows, validation hold-out, WebDataset shards, labels and dataset.json.

Every converter turns its source layout into a list of `SourceImage` (small metadata, image bytes read
lazily) and hands it to `write_prepared`, which owns the row order, the validation split (docs/methods.md §1.3),
the shards and the atomic rename. Shards are plain tar files with fixed metadata (mtime 0, uid 0) so
that the same input gives byte-identical output.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.dataset import (
    DATASET_JSON,
    LABELS_PARQUET,
    SHARDS_DIR,
    DatasetMeta,
    LabelsTable,
    ShardEntry,
    atomic_folder,
    row_key,
    shard_name,
    table_fingerprint,
    write_labels,
    write_shards_info,
)
from mlpl.schemas.errors import InputError, naming_path
from mlpl.schemas.images import DECODE_ERRORS, UPRIGHT, decode_rgb, exif_orientation
from mlpl.schemas.labels import SPLITS
from mlpl.stages.families import family_of_dataset_name

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2
VAL_SEED = 1200


@dataclass(frozen=True)
class SourceImage:
    """One image of a source dataset. `read()` returns the original encoded bytes (never re-encoded).

    `labels` is None where the image's full labels are unknown (a user's own weakly labelled image).
    """

    key: str
    labels: np.ndarray | None
    ext: str
    read: Callable[[], bytes]
    origin: str = ""  # file path (or other locator) named in errors


@dataclass
class PrepareReport:
    """What `write_prepared` did, for the CLI and benchmarks."""

    out: Path
    splits: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    exif_rotated: int = 0  # images with an EXIF orientation other than upright, used as stored


def validation_split(n: int, fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """docs/methods.md §1.3: indices (into the official train split) of train and val, each sorted."""
    n_val = int(round(fraction * n))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])


@dataclass(frozen=True)
class CheckedImage:
    """The outcome of `check_image`: the original bytes, or why they cannot be used."""

    data: bytes | None
    error: str | None = None
    rotated: bool = False  # carries an EXIF orientation other than upright (ignored, see schemas/images.py)


def check_image(item: SourceImage) -> CheckedImage:
    """Read one source image and decode it completely (the rule of schemas/images.py), as every converter's
    images are checked: a truncated or undecodable file is reported, never written to a shard."""
    try:
        data = item.read()
    except OSError as e:
        return CheckedImage(None, f"cannot read ({e.__class__.__name__}: {e.strerror or e})")
    try:
        decode_rgb(data)
    except DECODE_ERRORS as e:
        return CheckedImage(None, f"not a decodable image ({e.__class__.__name__}: {e})")
    return CheckedImage(data, None, exif_orientation(data) != UPRIGHT)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_prepared(
    out: Path,
    *,
    name: str,
    classes: Sequence[str],
    train: Sequence[SourceImage],
    test: Sequence[SourceImage],
    source: dict[str, Any],
    val: Sequence[SourceImage] | None = None,
    meta_fields: Callable[[LabelsTable], dict[str, Any]] | None = None,
    rows_per_shard: int = 1000,
    skip_corrupt: bool = False,
    overwrite: bool = False,
    workers: int = 0,
    after_write: Callable[[Path, DatasetMeta, LabelsTable], None] | None = None,
) -> PrepareReport:
    """Write the prepared dataset to `out` (atomically). `train`/`test` are the source's official splits.

    With `val` given, the source names its own validation split and no hold-out is drawn: `source_index`
    then counts train and val together in the order given (train first). `meta_fields(table)` gives
    further `DatasetMeta` fields (family, expected positives), measured on the rows as written.
    An unreadable image is an error naming it, unless `skip_corrupt`, which drops it (before the
    validation split is drawn) and lists it in `dataset.json`. `after_write` runs inside the temporary
    folder before the rename (observation regimes are written there).
    """
    if rows_per_shard < 1:
        raise InputError(f"--rows-per-shard must be ≥ 1, got {rows_per_shard}")
    classes = tuple(classes)
    report = PrepareReport(Path(out), {})
    workers = workers or min(8, (__import__("os").cpu_count() or 1) * 2)
    with atomic_folder(Path(out), overwrite=overwrite) as tmp:
        (tmp / SHARDS_DIR).mkdir()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            train = _drop_corrupt(train, pool, skip_corrupt, report) if skip_corrupt else list(train)
            test = _drop_corrupt(test, pool, skip_corrupt, report) if skip_corrupt else list(test)
            if not train:
                dropped = f" ({len(report.skipped)} unreadable images dropped by --skip-corrupt)" * bool(report.skipped)
                raise InputError(f"{out}: no train image is left to write{dropped}; expected at least one readable "
                                 "image in the official train split; nothing was written")
            if val is None:
                tr_idx, va_idx = validation_split(len(train))
                given_val: list[tuple[str, int, SourceImage]] = [("val", int(i), train[i]) for i in va_idx]
            else:
                val = _drop_corrupt(val, pool, skip_corrupt, report) if skip_corrupt else list(val)
                tr_idx = np.arange(len(train))
                given_val = [("val", len(train) + i, item) for i, item in enumerate(val)]
            ordered: list[tuple[str, int, SourceImage]] = (
                [("train", int(i), train[i]) for i in tr_idx]
                + given_val
                + [("test", i, item) for i, item in enumerate(test)]
            )
            rows, keys, splits, src_idx, labels, known, shard_of = [], [], [], [], [], [], []
            entries: list[ShardEntry] = []
            for split in SPLITS:
                part = [(i, item) for s, i, item in ordered if s == split]
                for start in range(0, len(part), rows_per_shard):
                    chunk = part[start : start + rows_per_shard]
                    first_row = len(rows)
                    entry = ShardEntry(shard_name(split, len(entries)), split, first_row, len(chunk))
                    results = pool.map(check_image, [item for _, item in chunk])
                    shard_path = tmp / SHARDS_DIR / entry.name
                    with naming_path(shard_path), tarfile.open(shard_path, "w", format=tarfile.USTAR_FORMAT) as tar:
                        for (i, item), checked in zip(chunk, results):
                            if checked.data is None:
                                raise InputError(f"{item.origin or item.key}: {checked.error}; expected a readable "
                                                 "image (pass --skip-corrupt to drop such images)")
                            report.exif_rotated += checked.rotated
                            row = len(rows)
                            _add_member(tar, f"{row_key(row)}.{item.ext}", checked.data)
                            _add_member(tar, f"{row_key(row)}.row", str(row).encode())
                            rows.append(row)
                            keys.append(item.key)
                            splits.append(split)
                            src_idx.append(i)
                            known.append(item.labels is not None)
                            labels.append(np.asarray(item.labels if item.labels is not None else [], dtype=np.int16))
                            shard_of.append(len(entries))
                    entries.append(entry)
            exts = sorted({item.ext for _, _, item in ordered})
            table = LabelsTable(
                row=np.asarray(rows, dtype=np.int64),
                key=keys,
                split=np.asarray(splits),
                source_index=np.asarray(src_idx, dtype=np.int64),
                labels=labels,
                shard=np.asarray(shard_of, dtype=np.int32),
                classes=classes,
                known=None if all(known) else np.asarray(known, dtype=bool),
            )
        write_labels(tmp / LABELS_PARQUET, table)
        write_shards_info(tmp, entries, rows_per_shard)
        report.splits = {s: int((table.split == s).sum()) for s in SPLITS}
        src = dict(source)
        if report.skipped:
            src["skipped_corrupt"] = report.skipped
        if report.exif_rotated:
            log.warning("%d images carry an EXIF orientation other than upright; their pixels are used as stored "
                        "(EXIF orientation is ignored in both stages, see schemas/images.py)", report.exif_rotated)
        src["exif_orientation"] = {"rule": "ignored", "images_not_upright": report.exif_rotated}
        fields = meta_fields(table) if meta_fields is not None else {}
        # every converter records its hyperparameter family; a known dataset's comes from the family registry
        if "family" not in fields:
            fields["family"] = family_of_dataset_name(name, f"--dataset {name}")
        meta = DatasetMeta(
            name=name,
            classes=classes,
            splits=report.splits,
            fingerprint=table_fingerprint(table),
            image_ext=exts[0] if len(exts) == 1 else "mixed",
            rows_per_shard=rows_per_shard,
            source=src,
            **fields,
        )
        if after_write is not None:
            after_write(tmp, meta, table)
            from mlpl.schemas.dataset import list_regimes

            meta = DatasetMeta(**{**meta.__dict__, "regimes": tuple(list_regimes(tmp))})
        (tmp / DATASET_JSON).write_text(meta.to_json())
    return report


def _drop_corrupt(
    items: Sequence[SourceImage], pool: ThreadPoolExecutor, skip: bool, report: PrepareReport
) -> list[SourceImage]:
    kept = []
    for item, checked in zip(items, pool.map(check_image, items)):
        if checked.data is None:
            log.warning("skipping %s: %s", item.origin or item.key, checked.error)
            report.skipped.append(item.origin or item.key)
        else:
            kept.append(item)
    return kept
