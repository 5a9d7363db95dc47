"""MS-COCO instances JSON (2014 and 2017 layouts) → prepared dataset, as docs/methods.md §1.1 states.

A category is positive for an image if any annotation has it, crowd annotations included; images
with no annotation are dropped; rows are ordered by image id compared as strings (the literature's
`sorted(np.unique([str(id) ...]))`); classes are the JSON's `categories` in file order, which for the
real 2014 and 2017 files is the order of the shipped `coco.txt`. Official train = the train JSON,
test = the val JSON. The JSON is read as a stream, one array element at a time, so the 450 MB
train2014 file never sits in memory as Python objects.
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.sources import image_ext, image_file, load_classnames, write_from_source
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

YEARS = ("2014", "2017")
CLASS_LIST = "coco.txt"
LAYOUT = ("annotations/instances_{train,val}<year>.json with images in train<year>/ and val<year>/ "
          "(year 2014 or 2017)")

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonStream:
    """One top-level JSON object read in chunks: values decoded one at a time with the C decoder."""

    def __init__(self, fh: TextIO, path: Path, chunk: int = 1 << 20) -> None:
        self.fh, self.path, self.chunk = fh, path, chunk
        self.buf, self.pos, self.eof = "", 0, False

    def _fill(self) -> bool:
        """Append the next chunk (at least as much as is buffered, so a long value costs O(n)); False at EOF."""
        if self.eof:
            return False
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos :], 0
        try:
            data = self.fh.read(max(self.chunk, len(self.buf) - self.pos))
        except UnicodeDecodeError as e:
            raise InputError(f"{self.path}: not UTF-8 text ({e}); expected a COCO instances JSON") from None
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            found = repr(c) if c else "the end of the file"
            raise InputError(f"{self.path}: malformed JSON: expected one of {list(chars)}, found {found}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                val, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._fill():
                    continue
                raise InputError(f"{self.path}: not valid JSON ({e.msg})") from None
            if end == len(self.buf) and self._fill():
                continue  # a number cut by the chunk boundary ("12" of "123"): decode again with more text
            self.pos = end
            return val


def iter_top_level(path: Path, arrays: frozenset[str]) -> Iterator[tuple[str, Any]]:
    """(key, value) of a top-level JSON object; for the keys in `arrays`, (key, element) per element."""
    try:
        fh = open(path, encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}: {e.strerror})") from None
    with fh:
        stream = JsonStream(fh, path)
        stream.expect("{")
        if stream.peek() == "}":
            return
        while True:
            key = stream.value()
            if not isinstance(key, str):
                raise InputError(f"{path}: malformed JSON: object key {key!r} is not a string")
            stream.expect(":")
            if key in arrays:
                if stream.peek() != "[":
                    raise InputError(f"{path}: {key!r} is not a list; expected a COCO instances JSON")
                stream.pos += 1
                if stream.peek() == "]":
                    stream.pos += 1
                    yield key, None
                else:
                    while True:
                        yield key, stream.value()
                        if stream.expect(",]") == "]":
                            break
            else:
                yield key, stream.value()
            if stream.expect(",}") == "}":
                return


@dataclass
class CocoInstances:
    """What the converter needs from one instances JSON (no segmentations, no boxes)."""

    path: Path
    categories: list[tuple[int, str]]
    file_names: dict[int, str]
    ann_image: np.ndarray
    ann_category: np.ndarray
    crowd: int


def _field(obj: Any, name: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(name), kind) or isinstance(obj.get(name), bool):
        raise InputError(f"{path}: {where} has no {kind.__name__} field {name!r}; expected a COCO instances JSON")
    return obj[name]


def read_instances(path: Path) -> CocoInstances:
    """Stream a COCO instances JSON into categories, image file names and (image, category) pairs."""
    categories: list[tuple[int, str]] = []
    file_names: dict[int, str] = {}
    ann_image, ann_category = array("q"), array("q")
    crowd = 0
    seen: set[str] = set()
    for key, item in iter_top_level(path, frozenset({"images", "annotations", "categories"})):
        seen.add(key)
        if item is None:
            continue
        if key == "images":
            image_id = _field(item, "id", int, path, "an entry of 'images'")
            if image_id in file_names:
                raise InputError(f"{path}: image id {image_id} appears twice in 'images' ({file_names[image_id]!r} "
                                 f"and {item.get('file_name')!r}); expected each id once")
            file_names[image_id] = _field(item, "file_name", str, path, f"image {image_id!r}")
        elif key == "annotations":
            where = f"annotation {item.get('id')!r}" if isinstance(item, dict) else "an entry of 'annotations'"
            ann_image.append(_field(item, "image_id", int, path, where))
            ann_category.append(_field(item, "category_id", int, path, where))
            crowd += bool(item.get("iscrowd", 0))
        elif key == "categories":
            categories.append((_field(item, "id", int, path, "an entry of 'categories'"),
                               _field(item, "name", str, path, f"category {item.get('id')!r}")))
    missing = [k for k in ("images", "annotations", "categories") if k not in seen]
    if missing:
        raise InputError(f"{path}: no {' / '.join(repr(k) for k in missing)} list; expected a COCO instances JSON "
                         "with 'images', 'annotations' and 'categories'")
    if not categories:
        raise InputError(f"{path}: 'categories' is empty; expected the dataset's categories")
    return CocoInstances(path, categories, file_names, np.frombuffer(ann_image, dtype=np.int64),
                         np.frombuffer(ann_category, dtype=np.int64), crowd)


def image_labels(inst: CocoInstances) -> dict[int, np.ndarray]:
    """Image id → sorted class indices (JSON category order), for images with at least one annotation."""
    index = {cid: i for i, (cid, _) in enumerate(inst.categories)}
    if len(index) != len(inst.categories):
        raise InputError(f"{inst.path}: duplicate category ids in 'categories'")
    lookup = np.full(max(index) + 1, -1, dtype=np.int64)
    lookup[list(index)] = list(index.values())
    cats = inst.ann_category
    bad = (cats < 0) | (cats >= len(lookup))
    bad[~bad] = lookup[cats[~bad]] < 0
    if bad.any():
        raise InputError(f"{inst.path}: an annotation has category_id {int(cats[bad][0])}, which is not in "
                         f"'categories' ({int(bad.sum())} such annotations)")
    unknown = np.setdiff1d(inst.ann_image, np.fromiter(inst.file_names, dtype=np.int64, count=len(inst.file_names)))
    if len(unknown):
        raise InputError(f"{inst.path}: annotations refer to image_id {int(unknown[0])}, which is not in 'images' "
                         f"({len(unknown)} such ids)")
    pairs = np.unique(np.stack([inst.ann_image, lookup[cats]], axis=1), axis=0)
    images, starts = np.unique(pairs[:, 0], return_index=True)
    return {int(i): pairs[s:e, 1].astype(np.int16) for i, s, e in zip(images, starts, [*starts[1:], len(pairs)])}


def path_template(keys: list[str], file_names: list[str], folder: str) -> str | None:
    """A `{key}` pattern giving every image's path under the root (for export-formatted), or None."""
    if not keys:
        return f"{folder}/{{key}}"
    first = file_names[0].replace(f"{int(keys[0]):012d}", "{key:0>12}")
    pattern = f"{folder}/{first}"
    if "{key" in first and all(pattern.format(key=k) == f"{folder}/{f}" for k, f in zip(keys, file_names)):
        return pattern
    return None


def split_images(inst: CocoInstances, image_dir: Path) -> tuple[list[SourceImage], dict[str, Any]]:
    """The images of one instances JSON with at least one annotation, ordered by id as strings."""
    labels = image_labels(inst)
    if not labels:
        raise InputError(f"{inst.path}: no image has an annotation; expected a COCO instances JSON with annotations")
    keys = sorted(str(i) for i in labels)
    items, names = [], []
    for key in keys:
        name = inst.file_names[int(key)]
        reader = image_file(image_dir, name, f"{inst.path}: image {key}")
        items.append(SourceImage(key=key, labels=labels[int(key)], ext=image_ext(name, str(inst.path)),
                                 read=reader, origin=str(reader.path)))
        names.append(name)
    info = {
        "json": str(inst.path),
        "images_in_json": len(inst.file_names),
        "dropped_no_annotation": len(inst.file_names) - len(keys),
        "annotations": len(inst.ann_image),
        "crowd_annotations": inst.crowd,
        "path": path_template(keys, names, image_dir.name),
    }
    return items, info


def _detect_year(root: Path, year: str | None) -> str:
    if year is not None:
        if str(year) not in YEARS:
            raise InputError(f"--year: {year}; expected one of {list(YEARS)}")
        return str(year)
    found = [y for y in YEARS if (root / "annotations" / f"instances_train{y}.json").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        expected = " or ".join(f"{root}/annotations/instances_train{y}.json" for y in YEARS)
        raise InputError(f"--root {root}: found neither {expected}; expected the COCO layout {LAYOUT}")
    raise InputError(f"--root {root}: both the 2014 and 2017 layouts are present; pass --year 2014 or --year 2017")


@register_dataset(
        name="coco",
        description="MS-COCO 2014/2017 instances JSON: 80 categories, crowd counted, unannotated images dropped",
        reference="Lin et al., Microsoft COCO (ECCV 2014); docs/methods.md §1.1",
        options=("year", "no_test"),
        card="coco2014.md",
        class_list=CLASS_LIST,
        formatted_name="coco2014",
        layout=LAYOUT,
    )
def prepare_coco(req: PrepareRequest) -> PrepareReport:
    root = Path(req.root)
    year = _detect_year(root, req.options.get("year"))
    no_test = bool(req.options.get("no_test"))
    splits = {"train": f"train{year}"} | ({} if no_test else {"test": f"val{year}"})
    parsed: dict[str, CocoInstances] = {}
    for split, folder in splits.items():
        path = root / "annotations" / f"instances_{folder}.json"
        if not path.is_file():
            hint = "; pass --no-test to prepare without a test split" if split == "test" else ""
            raise InputError(f"{path}: not found; expected the COCO {year} layout (annotations/"
                             f"instances_{{train,val}}{year}.json, images in train{year}/, val{year}/){hint}")
        parsed[split] = read_instances(path)
    classes = tuple(name for _, name in parsed["train"].categories)
    if "test" in parsed and parsed["test"].categories != parsed["train"].categories:
        raise InputError(f"{parsed['test'].path}: 'categories' differ from {parsed['train'].path}; "
                         "expected the same categories in the same order")
    if classes != load_classnames(CLASS_LIST):
        log.warning("%s: categories differ from the literature's %s (%d vs %d names)", parsed["train"].path,
                    CLASS_LIST, len(classes), len(load_classnames(CLASS_LIST)))
    items: dict[str, list[SourceImage]] = {"test": []}
    info: dict[str, Any] = {}
    for split, inst in parsed.items():
        items[split], info[split] = split_images(inst, root / splits[split])
        log.info("%s: %d of %d images have annotations (%d crowd annotations counted)", inst.path,
                 len(items[split]), len(inst.file_names), inst.crowd)
    source = {
        "layout": f"coco{year}",
        "root": str(root.resolve()),
        "images_root": str(root.resolve()),
        "image_paths": {s: info[s]["path"] for s in info},
        "splits": {s: {k: v for k, v in info[s].items() if k != "path"} for s in info},
        "class_list": CLASS_LIST,
        "empty_labels": "dropped",
        "test": "none (--no-test)" if no_test else f"val{year}",
    }
    return write_from_source(req, f"coco{year}", classes, items["train"], items["test"], source)


