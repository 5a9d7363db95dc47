"""Reading source layouts: shipped class lists, layout roots, text lists, lazy image readers.

The helpers every converter shares, so that each one names the missing file and the layout it
expected in the same way, reads text lists the same way (CRLF, BOM and blank lines tolerated) and
reads image bytes lazily (`FileBytes`, a picklable callable: no dataset is ever held in memory).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from mlpl.schemas.dataset import DatasetMeta, LabelsTable
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.observations import write_regimes
from mlpl.stages.prepare.writer import PrepareReport, SourceImage, write_prepared

if TYPE_CHECKING:
    from mlpl.stages.prepare.datasets import PrepareRequest

CLASSNAMES_DIR = Path(__file__).resolve().parent / "classnames"

# The shard contract allows jpg and png; `.jpeg` files are JPEG bytes and are stored as `jpg`.
_IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}


@cache
def load_classnames(file: str) -> tuple[str, ...]:
    """Class names of a shipped list (`stages/prepare/classnames/<file>`), one per line, in order."""
    path = CLASSNAMES_DIR / file
    if not path.is_file():
        known = sorted(p.name for p in CLASSNAMES_DIR.glob("*.txt"))
        raise InputError(f"{path}: no such class list; shipped lists: {known}")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(set(names)) != len(names):
        raise InputError(f"{path}: duplicate class names")
    return names


@dataclass(frozen=True)
class FileBytes:
    """`SourceImage.read` for an image file: its original bytes, read only when called.

    With `root` (an already resolved folder), the file's real path (symbolic links followed) must lie inside
    it, checked when read: a link in the source folder cannot make prepare copy a file from elsewhere.
    """

    path: Path
    root: Path | None = None
    where: str = ""

    def __call__(self) -> bytes:
        if self.root is not None and not self.path.resolve().is_relative_to(self.root):
            raise InputError(f"{self.where or self.path}: image {str(self.path)!r} resolves to "
                             f"{self.path.resolve()}, outside the source folder {self.root}; expected images "
                             "inside it")
        return self.path.read_bytes()


def image_file(root: Path, name: str, where: str) -> FileBytes:
    """The reader of image `name` (a relative path from a source file) under `root`, kept inside `root`.

    Every converter builds its image paths with this, so that a list, JSON or array received from others
    cannot make prepare read a file outside the folder the user named: an absolute name, or one whose `..`
    leaves `root`, is an error naming `where` (the file and row it came from).
    """
    pure = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or PureWindowsPath(name).drive or ".." in parts or not parts:
        raise InputError(f"{where}: image path {name!r} is absolute or leaves the source folder {root}; "
                         "expected a path relative to it, without '..'")
    base = _resolved(Path(root))
    return FileBytes(base.joinpath(*parts), base, where)


@cache
def _resolved(root: Path) -> Path:
    return root.resolve()


def image_ext(name: str, origin: str) -> str:
    """Shard extension of an image file name (`jpg` or `png`); anything else names `origin`."""
    ext = _IMAGE_EXTS.get(Path(name).suffix.lower().lstrip("."))
    if ext is None:
        raise InputError(f"{origin}: image {name!r} is neither .jpg/.jpeg nor .png; expected JPEG or PNG files")
    return ext


def find_layout_root(root: Path, marker: str, candidates: Sequence[str], layout: str) -> Path:
    """The first of `root/<candidate>` that holds `marker`; otherwise an error listing where it looked."""
    looked = []
    for sub in candidates:
        base = Path(root) / sub if sub else Path(root)
        if (base / marker).exists():
            return base
        looked.append(str(base / marker))
    raise InputError(f"--root {root}: {marker} not found (looked for {', '.join(looked)}); expected {layout}")


def require_file(path: Path, layout: str) -> Path:
    if not Path(path).is_file():
        raise InputError(f"{path}: not found; expected {layout}")
    return Path(path)


def read_lines(path: Path, layout: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of each non-blank line; CRLF, CR and a UTF-8 BOM are tolerated."""
    require_file(path, layout)
    try:
        with open(path, encoding="utf-8-sig", newline=None) as fh:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if text:
                    yield lineno, text
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e}); expected {layout}") from None


_INT = re.compile(r"[+-]?\d+")


def parse_int(token: str, path: Path, lineno: int, what: str, allowed: Sequence[int] | None = None) -> int:
    """An integer field of a text list, or an error naming file, line, field and the allowed values."""
    if not _INT.fullmatch(token):
        raise InputError(f"{path}:{lineno}: {what} is {token!r}; expected an integer")
    value = int(token)
    if allowed is not None and value not in allowed:
        raise InputError(f"{path}:{lineno}: {what} is {value}; expected one of {list(allowed)}")
    return value


def write_from_source(
    req: PrepareRequest,
    name: str,
    classes: Sequence[str],
    train: Sequence[SourceImage],
    test: Sequence[SourceImage],
    source: dict[str, Any],
    extra_regimes: Callable[[Path, LabelsTable], None] | None = None,
    val: Sequence[SourceImage] | None = None,
    meta_fields: Callable[[LabelsTable], dict[str, Any]] | None = None,
) -> PrepareReport:
    """`write_prepared` with the request's shard, corrupt-image and overwrite options, then its regimes."""

    def after_write(tmp: Path, meta: DatasetMeta, table: LabelsTable) -> None:
        write_regimes(tmp, table, req.regimes)
        if extra_regimes is not None:
            extra_regimes(tmp, table)

    return write_prepared(
        req.out, name=name, classes=classes, train=train, test=test, source=source, val=val, meta_fields=meta_fields,
        rows_per_shard=req.rows_per_shard, skip_corrupt=req.skip_corrupt, overwrite=req.overwrite,
        after_write=after_write,
    )
