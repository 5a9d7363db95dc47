"""A prepared dataset's shards: the shard index `shards/_info.json`, and every sample checked as it is read.

A shard holds the rows `first_row .. first_row + num_samples - 1` of `_info.json`, in order, each as
`<row key>.jpg|png` plus `<row key>.row`. Whatever reads shards (stage one, stage two, `validate`) passes
the samples through `ShardCheck`, so a member named `../x`, a foreign or missing row, a shard cut short
or one that is missing is an error naming the shard and the member, never a silently shorter epoch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlpl.schemas.errors import InputError

SHARDS_SCHEMA_VERSION = 1
SHARDS_DIR = "shards"
SHARDS_INFO = "_info.json"  # the shard index: samples per shard (timm's reader's habit)

IMAGE_EXTS = ("jpg", "png")
MEMBER_EXTS = (*IMAGE_EXTS, "row")
_ROW_KEY = re.compile(r"\d{9}")
_FIX = "prepare the dataset again (or restore the shard from the prepared copy)"


def check_shards_exist(paths: Iterable[str | os.PathLike]) -> None:
    """Fail before any work when a shard listed in `_info.json` is not on disk."""
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: shard listed in shards/_info.json is missing; {_FIX}")


def raise_shard_error(exn: BaseException) -> bool:
    """A WebDataset `handler`: a shard that cannot be opened or read is an error naming it (never skipped)."""
    if isinstance(exn, InputError):
        raise exn
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)
    where = url or "a shard"
    reason = exn.args[0] if exn.args else exn.__class__.__name__
    if isinstance(exn, FileNotFoundError):
        raise InputError(f"{where}: shard is missing; {_FIX}") from None
    raise InputError(f"{where}: cannot be read ({exn.__class__.__name__}: {reason}); the shard is truncated "
                     f"or damaged; {_FIX}") from None


class ShardCheck:
    """A picklable WebDataset stage: raw samples of known shards in, the same samples out, each checked.

    Args:
        shards: per shard path (as the URL given to WebDataset): (first row, number of samples).
    """

    def __init__(self, shards: dict[str, tuple[int, int]]) -> None:
        self.shards = {str(k): v for k, v in shards.items()}

    def _finish(self, url: str | None, seen: int) -> None:
        if url is not None and seen != self.shards[url][1]:
            raise InputError(f"{url}: ends after {seen} of {self.shards[url][1]} samples (shards/_info.json); "
                             f"the shard is truncated or damaged; {_FIX}")

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        url: str | None = None
        seen = 0
        for sample in src:
            where = str(sample.get("__url__"))
            if where != url:
                self._finish(url, seen)
                if where not in self.shards:
                    raise InputError(f"{where}: not a shard of this dataset's shards/_info.json")
                url, seen = where, 0
            first, count = self.shards[url]
            key = str(sample.get("__key__"))
            members = sorted(k for k in sample if not k.startswith("__"))
            expected = f"{first + seen:09d}"
            if not _ROW_KEY.fullmatch(key) or key != expected:
                raise InputError(f"{url}: member {key}.{'|'.join(members)} where row {expected} was expected "
                                 f"(rows {first}..{first + count - 1} in order); the shard is not as prepared; {_FIX}")
            other = [m for m in members if m not in MEMBER_EXTS]
            images = [m for m in members if m in IMAGE_EXTS]
            row = sample.get("row")
            if other or len(images) != 1 or row is None or row.strip() != str(int(key)).encode():
                raise InputError(f"{url}: sample {key} has members {members}; expected one of {list(IMAGE_EXTS)} "
                                 f"and 'row' holding {int(key)}; {_FIX}")
            seen += 1
            yield sample
        self._finish(url, seen)


def scan_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The samples of one shard as `ShardCheck` reads them, image bytes left unread (for `validate`).

    Members are grouped by key as WebDataset groups them (name up to the first dot of its last part).
    """
    import tarfile

    url = str(path)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(url, "r:") as tar:
            for member in tar:
                prefix, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{prefix}/{stem}" if prefix else stem
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                data = b""
                if ext == "row" and member.isfile() and member.size < 64:
                    data = tar.extractfile(member).read()
                current[ext or "?"] = data
    except (OSError, tarfile.TarError) as e:
        e.args = (*e.args, url)
        raise_shard_error(e)
    if current is not None:
        yield current


@dataclass(frozen=True)
class ShardEntry:
    name: str
    split: str
    first_row: int
    num_samples: int


def write_shards_info(root: Path, entries: Sequence[ShardEntry], rows_per_shard: int) -> None:
    info = {
        "version": SHARDS_SCHEMA_VERSION,
        "rows_per_shard": rows_per_shard,
        "shards": [asdict(e) for e in entries],
        "total_samples": int(sum(e.num_samples for e in entries)),
    }
    (Path(root) / SHARDS_DIR / SHARDS_INFO).write_text(json.dumps(info, indent=2) + "\n")


def read_shards_info(root: Path) -> list[ShardEntry]:
    path = Path(root) / SHARDS_DIR / SHARDS_INFO
    if not path.exists():
        raise InputError(f"{path}: not found; expected the shard index of a prepared dataset")
    try:
        info = json.loads(path.read_text())
        return [ShardEntry(**e) for e in info["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: malformed shard index ({e.__class__.__name__}: {e}); prepare the dataset "
                         "again") from None
