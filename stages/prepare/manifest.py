"""`mlpl prepare --dataset manifest`: a user's own images and the weak labels they really hold → a prepared dataset.

The manifest (see `manifest_io` for the file formats and docs/own-data.md for a worked example) gives one row
per image. Train rows may carry full labels, observed labels only, or nothing (unlabelled images are real and
stay); val and test rows need full labels. The observed labels as given (`positives`, `negatives` of the train
rows) become the regime `given`; simulated regimes (`spml`, `partial-0.5`, ...) can be asked for too and work
where the train rows' full labels are known.

Validation: a `val` split given in the manifest is used as it is; without one, a hold-out is drawn from the
train rows as for every other dataset (docs/methods.md §1.3) when their full labels are all known, and otherwise
the dataset has no val split (training then keeps its last epoch, and says so).

Hyperparameters: `--family` names the literature's dataset whose settings fit the data best; without it the
`generic` family is used, and m (the expected positives per image) is measured on the val split's full labels.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.dataset import LabelsTable, Observations, write_observations
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import SPLITS, Observed
from mlpl.stages.families import get_family_info
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.manifest_io import ManifestColumns, read_manifest
from mlpl.stages.prepare.sources import FileBytes, image_ext, image_file, read_lines, write_from_source
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

GIVEN_REGIME = "given"
DEFAULT_FAMILY = "generic"  # stages/families.py: documented defaults, and the m measured here wins
SHOWN = 5  # how many unknown names / rows an error lists


@dataclass(frozen=True)
class ManifestEntry:
    """One checked manifest row: class indices, or None for unknown full labels."""

    index: int
    key: str
    read: FileBytes
    split: str
    labels: np.ndarray | None
    positives: np.ndarray
    negatives: np.ndarray


def read_classes(path: Path) -> tuple[str, ...]:
    """Class names of a `--classes` file: one per line, order kept, blank lines skipped, no duplicates."""
    names, first = [], {}
    for lineno, name in read_lines(Path(path), "a class list with one class name per line"):
        if name in first:
            raise InputError(f"{path}:{lineno}: class {name!r} is already on line {first[name]}; expected each "
                             "class once")
        first[name] = lineno
        names.append(name)
    if not names:
        raise InputError(f"{path}: no class names; expected one class name per line")
    return tuple(names)


def _resolve_classes(columns: ManifestColumns, classes_file: Path | None) -> tuple[str, ...]:
    seen: dict[str, list[str]] = defaultdict(list)  # name → where it occurs (first few)
    for col, values in columns.labels.items():
        for i, names in enumerate(values):
            for name in names or ():
                if len(seen[name]) < SHOWN:
                    seen[name].append(columns.where(i, col))
    if classes_file is None:
        if not seen:
            raise InputError(f"{columns.path}: no class name in any of the columns labels, positives, negatives; "
                             "expected labelled rows, or pass --classes FILE")
        return tuple(sorted(seen))
    classes = read_classes(classes_file)
    unknown = sorted(set(seen) - set(classes))
    if unknown:
        rows = "; ".join(f"{name!r} at {seen[name][0]}" for name in unknown[:SHOWN])
        more = f" (and {len(unknown) - SHOWN} more)" if len(unknown) > SHOWN else ""
        raise InputError(f"{columns.path}: {len(unknown)} class names are not in --classes {classes_file}: "
                         f"{rows}{more}; expected names listed in that file")
    return classes


def _indices(names: list[str] | None, index: dict[str, int]) -> np.ndarray | None:
    return None if names is None else np.unique([index[n] for n in names]).astype(np.int16)


def check_entries(columns: ManifestColumns, images_root: Path, classes: tuple[str, ...]) -> list[ManifestEntry]:
    """Every row checked: split, image path (exists, JPEG/PNG, not twice), labels consistent with observations."""
    index = {name: i for i, name in enumerate(classes)}
    empty = np.zeros(0, dtype=np.int16)
    entries: list[ManifestEntry] = []
    first_row: dict[str, int] = {}
    for i in range(len(columns)):
        split = columns.split[i] or "train"
        if split not in SPLITS:
            raise InputError(f"{columns.where(i, 'split')}: {split!r}; expected one of {list(SPLITS)} "
                             "(empty means train)")
        name = columns.image[i]
        if name is None:
            raise InputError(f"{columns.where(i, 'image')}: empty; expected the image's path")
        image_ext(name, columns.where(i, "image"))
        # a relative path stays inside --images (links included); an absolute one is the user's explicit choice
        where = columns.where(i, "image")
        read = FileBytes(Path(name)) if os.path.isabs(name) else image_file(images_root, name, where)
        path = read.path
        if not path.is_file():
            raise InputError(f"{columns.where(i, 'image')}: image file {path} not found; expected a path relative "
                             f"to --images {images_root} or an absolute path")
        same = os.path.abspath(path)
        if same in first_row:
            raise InputError(f"{columns.where(i, 'image')}: {name!r} is the same image as "
                             f"{columns.where(first_row[same])}; expected each image once")
        first_row[same] = i
        labels = _indices(columns.labels.get("labels", [None] * len(columns))[i], index)
        pos = _indices(columns.labels["positives"][i], index) if "positives" in columns.labels else None
        neg = _indices(columns.labels["negatives"][i], index) if "negatives" in columns.labels else None
        pos, neg = (empty if pos is None else pos), (empty if neg is None else neg)
        if labels is None and split != "train":
            raise InputError(f"{columns.where(i, 'labels')}: a {split} row without full labels; {split} rows are "
                             f"scored against their full labels (write {'-'!r} or [] for an image with none)")
        both = np.intersect1d(pos, neg)
        if len(both):
            raise InputError(f"{columns.where(i)}: {[classes[c] for c in both]} are both positives and negatives")
        if labels is not None:
            wrong = np.setdiff1d(pos, labels).tolist() + np.intersect1d(neg, labels).tolist()
            if wrong:
                raise InputError(f"{columns.where(i)}: observed labels {[classes[c] for c in wrong]} contradict the "
                                 f"row's full labels {[classes[c] for c in labels]}")
        entries.append(ManifestEntry(i, name, read, split, labels, pos, neg))
    if not any(e.split == "train" for e in entries):
        raise InputError(f"{columns.path}: the train split is empty ({len(entries)} rows, none with split train "
                         "or an empty split); expected training images")
    return entries


def check_family(name: str) -> str:
    """A known hyperparameter family, or an error listing them (never a silent default)."""
    return get_family_info(name, option="--family").name


def expected_positives(table: LabelsTable, family: str) -> dict[str, Any]:
    """dataset.json fields for m: measured on the val split's full labels in the generic family
    (AEVLP's Theorem 4.1 takes m from fully labelled data, never from the observed positives, which are
    one per image by construction); otherwise the family's own value applies."""
    if family != DEFAULT_FAMILY:
        return {"family": family, "m_source": f"the {family} family's value"}
    rows = table.rows_of("val")
    if not len(rows):
        return {"family": family, "m_source": "no val split with full labels: the generic family's default"}
    m = float(np.mean([len(table.labels[r]) for r in rows]))
    return {"family": family, "expected_positives": round(m, 4),
            "m_source": f"mean positives per image of the val split's full labels ({len(rows)} images)"}


def given_observations(table: LabelsTable, entries: list[ManifestEntry], source: str) -> Observations:
    """The regime `given`: the train rows' observed labels exactly as the manifest states them."""
    by_key = {e.key: e for e in entries}
    rows = table.rows_of("train")
    obs = np.full((len(rows), len(table.classes)), int(Observed.UNKNOWN), dtype=np.int8)
    for i, r in enumerate(rows):
        entry = by_key[table.key[r]]
        obs[i, entry.negatives] = Observed.NEGATIVE
        obs[i, entry.positives] = Observed.POSITIVE
    params = {"regime": GIVEN_REGIME, "source": source,
              "positives_per_image": round(float((obs == Observed.POSITIVE).sum(1).mean()), 4),
              "unlabelled_images": int((obs == Observed.UNKNOWN).all(1).sum())}
    return Observations.from_matrix(GIVEN_REGIME, params, rows, obs)


@register_dataset(
        name="manifest",
        description="your own images: a CSV/TSV/JSONL/Parquet manifest of paths with full or observed labels",
        reference="docs/own-data.md",
        needs_root=False,
        options=("manifest", "classes", "family"),
        takes_images=True,
        default_regimes=(),
        layout="a manifest file (--manifest) and the folder its image paths are relative to (--images)",
    )
def prepare_manifest(req: PrepareRequest) -> PrepareReport:
    manifest = req.options.get("manifest")
    if manifest is None:
        raise InputError("--manifest: dataset 'manifest' needs --manifest FILE (CSV, TSV, JSONL or Parquet)")
    manifest = Path(manifest)
    columns = read_manifest(manifest)
    images_root = Path(req.images) if req.images is not None else manifest.parent
    if not images_root.is_dir():
        raise InputError(f"--images: {images_root} is not a folder")
    family = check_family(req.options.get("family") or DEFAULT_FAMILY)
    classes_file = req.options.get("classes")
    classes = _resolve_classes(columns, Path(classes_file) if classes_file else None)
    entries = check_entries(columns, images_root, classes)
    items: dict[str, list[SourceImage]] = {s: [] for s in SPLITS}
    for e in entries:
        items[e.split].append(SourceImage(key=e.key, labels=e.labels, ext=image_ext(e.key, str(manifest)),
                                          read=e.read, origin=f"{columns.where(e.index, 'image')}"))
    train_known = all(e.labels is not None for e in entries if e.split == "train")
    if items["val"]:
        val, val_from = items["val"], "the manifest's val rows"
    elif train_known:
        val, val_from = None, "held out from the train rows (docs/methods.md §1.3)"
    else:
        val, val_from = [], "none: no val rows in the manifest and unknown full labels in train"
    unknown = sum(e.labels is None for e in entries)
    source = {
        "layout": "manifest", "manifest": str(manifest.resolve()), "images_root": str(images_root.resolve()),
        "columns": ["image", "split", *columns.labels], "ignored_columns": list(columns.ignored),
        "classes_from": f"--classes {Path(classes_file).resolve()}" if classes_file else
        "the sorted names of the manifest", "val": val_from, "val_heldout": val is None,
        "unknown_full_labels": unknown, "empty_labels": "kept",
    }
    simulated = tuple(r for r in req.regimes if r != GIVEN_REGIME)

    def write_given(tmp: Path, table: LabelsTable) -> None:
        write_observations(tmp, given_observations(table, entries, str(manifest.resolve())))

    name = Path(req.out).name
    log.info("%s: %d rows (%s), %d classes, %d with unknown full labels", manifest, len(entries),
             ", ".join(f"{s} {len(v)}" for s, v in items.items()), len(classes), unknown)
    return write_from_source(replace(req, regimes=simulated), name, classes, items["train"], items["test"], source,
                             extra_regimes=write_given, val=val,
                             meta_fields=lambda table: expected_positives(table, family))


