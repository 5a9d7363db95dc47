"""The images `mlpl predict` is given: files, folders (recursive), glob patterns, or manifests."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from mlpl.schemas.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""What a folder or pattern contributes; a file named explicitly is taken whatever its name (and listed as
unreadable if it is not an image)."""


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(base) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _manifest_images(path: Path, images_root: Path | None) -> list[Path]:
    from mlpl.stages.prepare.manifest_io import read_manifest

    columns = read_manifest(path)
    root = images_root if images_root is not None else path.parent
    out = []
    for i, name in enumerate(columns.image):
        if name is None:
            raise InputError(f"{columns.where(i, 'image')}: empty; expected the image's path")
        out.append(Path(name) if os.path.isabs(name) else root / name)
    return out


def collect_images(inputs: Sequence[str | Path], images_root: Path | None = None) -> list[Path]:
    """Every image the inputs name, in the order given (folders and patterns sorted), each once.

    A manifest (`.csv`, `.tsv`, `.jsonl`, `.parquet`) contributes its `image` column, relative to
    `images_root` or else to the manifest's folder. An input that is neither a file, a folder nor a pattern
    matching something is an error naming it.
    """
    from mlpl.stages.prepare.manifest_io import MANIFEST_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            paths += _manifest_images(path, images_root)
        elif path.is_file():
            paths.append(path)
        elif path.is_dir():
            found = _folder_images(path)
            if not found:
                raise InputError(f"{path}: a folder without images (looked for {sorted(IMAGE_SUFFIXES)} "
                                 "files, recursively)")
            paths += found
        elif _is_pattern(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
            for m in matches:
                if Path(m).is_dir():
                    files += _folder_images(Path(m))
            if not files:
                raise InputError(f"{item}: the pattern matches no image file")
            paths += files
        else:
            raise InputError(f"{item}: no such file or folder (nor a pattern: use *, ? or [...])")
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
