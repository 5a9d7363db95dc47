"""Reading a manifest (CSV, TSV, JSONL or Parquet, with pyarrow) into checked columns that name their rows.

One row per image: `image` (a path), optional `split`, and up to three label columns, `labels` (full labels),
`positives` and `negatives` (observed labels). In CSV/TSV a label cell lists class names separated by `|`;
an empty cell is null (for `labels`: the full labels are unknown) and `-` is the empty list (known to hold
none of the classes). JSONL and Parquet hold lists of names (null = unknown, [] = none). Other columns are
ignored (and listed), unless their name is close to a known one, which is taken for a typo.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from mlpl.schemas.errors import InputError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
LABEL_COLUMNS = ("labels", "positives", "negatives")
KNOWN_COLUMNS = ("image", "split", *LABEL_COLUMNS)
NAME_SEPARATOR = "|"
NONE_CELL = "-"

Names = list[str] | None  # class names of one cell; None = null (unknown)


@dataclass(frozen=True)
class ManifestColumns:
    """The known columns of a manifest, one entry per data row; `where(i)` names row i in errors."""

    path: Path
    image: list[Any]
    split: list[Any]
    labels: dict[str, list[Names]]  # label column → per row (absent columns are not keys)
    ignored: tuple[str, ...] = ()
    lines: list[int] = field(default_factory=list)  # text formats: the file line of each row

    def __len__(self) -> int:
        return len(self.image)

    def where(self, i: int, column: str | None = None) -> str:
        place = f"{self.path}:{self.lines[i]}" if self.lines else f"{self.path} row {i}"
        return f"{place}, column {column!r}" if column else place


def manifest_kind(path: Path) -> str:
    """The manifest format of a file by its extension, or an error listing the formats."""
    suffix = Path(path).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"{path}: a manifest must end in one of {list(MANIFEST_SUFFIXES)} (CSV, TSV, JSONL, "
                         f"Parquet); got {suffix or 'no extension'!r}")
    return suffix.lstrip(".")


def read_manifest(path: Path) -> ManifestColumns:
    """Read and type-check a manifest file; a wrong type names the row and column."""
    path = Path(path)
    kind = manifest_kind(path)
    if not path.is_file():
        raise InputError(f"--manifest: {path} is not a file")
    reader = {"csv": _read_text, "tsv": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind]
    columns = reader(path)
    if not len(columns):
        raise InputError(f"{path}: the manifest has no rows; expected one row per image")
    if columns.ignored:
        log.info("%s: ignoring columns %s (known columns: %s)", path, list(columns.ignored), list(KNOWN_COLUMNS))
    return columns


def _check_column_names(path: Path, names: Sequence[str]) -> tuple[str, ...]:
    """The ignored column names; an error for a missing `image`, a duplicate, or a likely typo."""
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise InputError(f"{path}: column {dup[0]!r} appears twice; expected each column once")
    ignored = tuple(n for n in names if n not in KNOWN_COLUMNS)
    for name in ignored:
        close = difflib.get_close_matches(name.strip().lower(), KNOWN_COLUMNS, n=1, cutoff=0.75)
        if close and close[0] not in names:
            raise InputError(f"{path}: unknown column {name!r}; did you mean {close[0]!r}? "
                             f"(known columns: {list(KNOWN_COLUMNS)})")
    if "image" not in names:
        raise InputError(f"{path}: no 'image' column (columns found: {list(names)}); expected a column 'image' "
                         f"with each image's path, and optionally {list(KNOWN_COLUMNS[1:])}")
    return ignored


def _split_cell(cell: str, where: str) -> Names:
    text = cell.strip()
    if not text:
        return None
    if text == NONE_CELL:
        return []
    names = [n.strip() for n in text.split(NAME_SEPARATOR)]
    if any(not n for n in names):
        raise InputError(f"{where}: {cell!r} has an empty class name; expected names separated by "
                         f"{NAME_SEPARATOR!r} (an empty cell for unknown, {NONE_CELL!r} for none)")
    return names


def _read_text(path: Path) -> ManifestColumns:
    import pyarrow.csv as pcsv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh, delimiter=delimiter), [])
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    names = [h.strip() for h in header]
    ignored = _check_column_names(path, names)
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} file ({e})") from None
    n = len(table)
    lines = list(range(2, n + 2))  # line 1 is the header (cells with line breaks would shift these)
    image = table.column("image").to_pylist()
    split = table.column("split").to_pylist() if "split" in names else [None] * n
    labels = {}
    for col in LABEL_COLUMNS:
        if col in names:
            labels[col] = [_split_cell(c, f"{path}:{lines[i]}, column {col!r}")
                           for i, c in enumerate(table.column(col).to_pylist())]
    return ManifestColumns(path, [(x or "").strip() or None for x in image], [(x or "").strip() or None for x in split],
                           labels, ignored, lines)


def _check_list(value: Any, where: str) -> Names:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: {value!r} is not a list of class names; expected a list of strings "
                         "(null for unknown, [] for none)")
    if any(not v.strip() for v in value):
        raise InputError(f"{where}: {value!r} has an empty class name")
    return [v.strip() for v in value]


def _check_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() or None if isinstance(value, str) else None
    raise InputError(f"{where}: {value!r} is not a string; expected text")


def _from_records(path: Path, records: list[dict[str, Any]], lines: list[int]) -> ManifestColumns:
    """Columns from decoded rows, every value type-checked (the exact-error path for JSONL)."""
    names: list[str] = []
    for rec in records:
        names += [k for k in rec if k not in names]
    ignored = _check_column_names(path, names)
    out = ManifestColumns(path, [], [], {c: [] for c in LABEL_COLUMNS if c in names}, ignored, lines)
    for i, rec in enumerate(records):
        out.image.append(_check_str(rec.get("image"), out.where(i, "image")))
        out.split.append(_check_str(rec.get("split"), out.where(i, "split")))
        for col, values in out.labels.items():
            values.append(_check_list(rec.get(col), out.where(i, col)))
    return out


def _read_jsonl(path: Path) -> ManifestColumns:
    records, lines = [], []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per "
                                     "line") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{path}:{lineno}: {type(rec).__name__} is not a JSON object; expected one "
                                     "object per line")
                records.append(rec)
                lines.append(lineno)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    return _from_records(path, records, lines)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _is_name_list(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)


def _read_parquet(path: Path) -> ManifestColumns:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    names = table.schema.names
    ignored = _check_column_names(path, names)
    for col in ("image", "split"):
        if col in names and not _is_text(table.schema.field(col).type):
            raise InputError(f"{path}, column {col!r}: type {table.schema.field(col).type}; expected string")
    for col in LABEL_COLUMNS:
        if col in names and not _is_name_list(table.schema.field(col).type):
            raise InputError(f"{path}, column {col!r}: type {table.schema.field(col).type}; expected a list of "
                             "class names (list<string>; null for unknown, [] for none)")
    n = len(table)
    out = ManifestColumns(path, [], [], {}, ignored)
    out.image.extend(_check_str(v, out.where(i, "image")) for i, v in enumerate(table.column("image").to_pylist()))
    split = table.column("split").to_pylist() if "split" in names else [None] * n
    out.split.extend(_check_str(v, out.where(i, "split")) for i, v in enumerate(split))
    for col in LABEL_COLUMNS:
        if col in names:
            out.labels[col] = [_check_list(v, out.where(i, col)) for i, v in enumerate(table.column(col).to_pylist())]
    return out
