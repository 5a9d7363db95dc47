"""PASCAL VOC 2012 and 2007 (`ImageSets/Main/<cls>_<set>.txt`) → prepared datasets, as docs/methods.md §1.1 states.

Label `1` is positive; `0` (difficult only) and `-1` are negative; images with no positive are
dropped; rows are the image names sorted. VOC 2012: official train = `train`, test = `val`;
VOC 2007: `trainval` / `test` (the test tar unpacks into the same `VOCdevkit/VOC2007`).
Classes: the shipped `voc.txt`, whose order is also the alphabetical order of the class files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.sources import (
    find_layout_root,
    image_file,
    load_classnames,
    parse_int,
    read_lines,
    write_from_source,
)
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

CLASS_LIST = "voc.txt"


@dataclass(frozen=True)
class VocYear:
    name: str
    year: str
    train_set: str
    test_set: str

    @property
    def layout(self) -> str:
        return (f"VOCdevkit/VOC{self.year}/ImageSets/Main/<class>_{{{self.train_set},{self.test_set}}}.txt "
                f"and JPEGImages/<name>.jpg (--root may be VOCdevkit/VOC{self.year}, VOCdevkit or its parent)")


def read_image_set(
    main: Path, set_name: str, classes: tuple[str, ...], layout: str
) -> tuple[list[str], dict[str, list[int]], dict[str, Any]]:
    """(sorted names of the images with a positive, name → class indices, counts) from the per-class files."""
    positives: dict[str, list[int]] = {}
    names: set[str] = set()
    first = ""
    for c, cls in enumerate(classes):
        path = main / f"{cls}_{set_name}.txt"
        listed: set[str] = set()
        for lineno, line in read_lines(path, layout):
            parts = line.split()
            if len(parts) != 2:
                raise InputError(f"{path}:{lineno}: {line!r}; expected '<image name> <1|0|-1>'")
            value = parse_int(parts[1], path, lineno, "the label", (1, 0, -1))
            listed.add(parts[0])
            if value == 1:
                positives.setdefault(parts[0], []).append(c)
        if c == 0:
            names, first = listed, path.name
        elif listed != names:
            diff = sorted(listed ^ names)
            raise InputError(f"{path}: lists {len(listed)} images, {first} lists {len(names)} "
                             f"(e.g. {diff[0]!r} is in one only); expected the same images in every class file")
    kept = sorted(positives)
    return kept, positives, {"set": set_name, "listed": len(names), "dropped_no_positive": len(names) - len(kept)}


def _items(base: Path, kept: list[str], positives: dict[str, list[int]]) -> list[SourceImage]:
    items = []
    for name in kept:
        reader = image_file(base / "JPEGImages", f"{name}.jpg", f"{base / 'ImageSets' / 'Main'}: image {name!r}")
        items.append(SourceImage(key=name, labels=np.asarray(positives[name], dtype=np.int16), ext="jpg",
                                 read=reader, origin=str(reader.path)))
    return items


def prepare_voc(spec: VocYear, req: PrepareRequest) -> PrepareReport:
    base = find_layout_root(Path(req.root), "ImageSets/Main",
                            ("", f"VOC{spec.year}", f"VOCdevkit/VOC{spec.year}"), spec.layout)
    main = base / "ImageSets" / "Main"
    classes = load_classnames(CLASS_LIST)
    no_test = bool(req.options.get("no_test"))
    sets = {"train": spec.train_set} | ({} if no_test else {"test": spec.test_set})
    items: dict[str, list[SourceImage]] = {"test": []}
    counts = {}
    for split, set_name in sets.items():
        kept, positives, info = read_image_set(main, set_name, classes, spec.layout)
        items[split] = _items(base, kept, positives)
        counts[split] = info
        log.info("%s %s: %d images listed, %d without a positive dropped", spec.name, set_name, info["listed"],
                 info["dropped_no_positive"])
    source = {
        "layout": spec.name,
        "root": str(base.resolve()),
        "images_root": str((base / "JPEGImages").resolve()),
        "image_paths": {s: "{key}.jpg" for s in sets},
        "splits": counts,
        "class_list": CLASS_LIST,
        "empty_labels": "dropped",
        "test": "none (--no-test)" if no_test else spec.test_set,
    }
    return write_from_source(req, spec.name, classes, items["train"], items["test"], source)


@dataclass(frozen=True)
class _Prepare:
    """`DatasetInfo.prepare` for one VOC year (a picklable callable, not a lambda)."""

    spec: VocYear

    def __call__(self, req: PrepareRequest) -> PrepareReport:
        return prepare_voc(self.spec, req)


for _spec in (VocYear("voc2012", "2012", "train", "val"), VocYear("voc2007", "2007", "trainval", "test")):
    register_dataset(
        name=_spec.name,
        description=f"PASCAL VOC {_spec.year}: 20 classes, {_spec.train_set} / {_spec.test_set}, "
                    "difficult = negative, images without a positive dropped",
        reference="Everingham et al., The PASCAL VOC Challenge (IJCV 2010); docs/methods.md §1.1",
        options=("no_test",),
        card=f"{_spec.name}.md",
        class_list=CLASS_LIST,
        formatted_name=_spec.name,
        layout=_spec.layout,
    )(_Prepare(_spec))
