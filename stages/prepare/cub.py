"""CUB-200-2011 attributes (`images.txt`, `train_test_split.txt`, `image_attribute_labels.txt`) → prepared dataset.

docs/methods.md §1.1: 312 binary attributes (the shipped `cub.txt`, in attribute-id order), the `is_present`
column of `attributes/image_attribute_labels.txt` (fields: image, attribute, is_present, certainty,
time; only the first four tokens are read because a few lines carry extra fields; certainty is
ignored). Official train / test from `train_test_split.txt` (1 = train); rows in `images.txt` order.
Every (image, attribute) pair must appear exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.sources import (
    find_layout_root,
    image_ext,
    image_file,
    load_classnames,
    parse_int,
    read_lines,
    write_from_source,
)
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

CLASS_LIST = "cub.txt"
ATTRIBUTE_LABELS = Path("attributes") / "image_attribute_labels.txt"
LAYOUT = ("CUB_200_2011/ with images.txt, train_test_split.txt, attributes/image_attribute_labels.txt and "
          "images/<class folder>/<file>.jpg (--root may be CUB_200_2011 or its parent)")


def read_images(path: Path) -> tuple[list[int], list[str]]:
    ids, names = [], []
    for lineno, line in read_lines(path, LAYOUT):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: {line!r}; expected '<image id> <relative path>'")
        ids.append(parse_int(parts[0], path, lineno, "the image id"))
        if ids[-1] < 1:
            raise InputError(f"{path}:{lineno}: image id {ids[-1]}; expected a positive integer")
        names.append(parts[1].strip())
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: duplicate image ids; expected one line per image")
    return ids, names


def read_split(path: Path, index: dict[int, int]) -> np.ndarray:
    """is_train per image (in `images.txt` order)."""
    is_train = np.full(len(index), -1, dtype=np.int8)
    for lineno, line in read_lines(path, LAYOUT):
        parts = line.split()
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: {line!r}; expected '<image id> <1|0>'")
        image = parse_int(parts[0], path, lineno, "the image id")
        if image not in index:
            raise InputError(f"{path}:{lineno}: image id {image} is not in images.txt")
        is_train[index[image]] = parse_int(parts[1], path, lineno, "is_training_image", (0, 1))
    if (is_train < 0).any():
        missing = int(np.flatnonzero(is_train < 0)[0])
        raise InputError(f"{path}: no line for the image on line {missing + 1} of images.txt; expected every image")
    return is_train.astype(bool)


def read_attribute_labels(path: Path, ids: list[int], num_attributes: int, block: int = 1 << 18) -> np.ndarray:
    """is_present as a bool matrix [images, attributes] (rows in `ids` order), read in blocks of lines.

    The 3.7 M lines are parsed into small integer blocks and checked with numpy, so a bad line is still
    named by its number while the whole file never sits in memory.
    """
    lookup = np.full(max(ids) + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    present = np.zeros((len(ids), num_attributes), dtype=bool)
    seen = np.zeros((len(ids), num_attributes), dtype=bool)

    def flush(rows: list[tuple[int, int, int, int]]) -> None:
        a = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        lineno, image, attribute, value = a.T
        checks = (
            ((image < 0) | (image >= len(lookup)) | (lookup[np.clip(image, 0, len(lookup) - 1)] < 0),
             "image id {image} is not in images.txt"),
            ((attribute < 1) | (attribute > num_attributes),
             f"attribute id {{attribute}}; expected 1..{num_attributes}"),
            ((value != 0) & (value != 1), "is_present is {value}; expected 0 or 1"),
        )
        for bad, message in checks:
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{path}:{lineno[i]}: " + message.format(image=image[i], attribute=attribute[i],
                                                                            value=value[i]))
        r, c = lookup[image], attribute - 1
        flat = r * num_attributes + c
        order = np.argsort(flat, kind="stable")
        again = seen[r, c]  # a pair already read in an earlier block, or twice in this one
        again[order[1:][flat[order][1:] == flat[order][:-1]]] = True
        if again.any():
            i = int(np.flatnonzero(again)[0])
            raise InputError(f"{path}:{lineno[i]}: a second line for image {image[i]}, attribute {attribute[i]}")
        seen[r, c] = True
        present[r, c] = value == 1

    rows: list[tuple[int, int, int, int]] = []
    for lineno, line in read_lines(path, LAYOUT):
        parts = line.split(None, 4)
        try:
            if len(parts) < 4:
                raise ValueError
            rows.append((lineno, int(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:
            raise InputError(f"{path}:{lineno}: {line!r}; expected '<image id> <attribute id> <is_present> "
                             "<certainty id> <time>' (integers first)") from None
        if len(rows) == block:
            flush(rows)
            rows = []
    flush(rows)
    if not seen.all():
        image, attribute = (int(x) for x in np.argwhere(~seen)[0])
        raise InputError(f"{path}: {int((~seen).sum())} (image, attribute) pairs have no line (first: image id "
                         f"{ids[image]}, attribute {attribute + 1}); expected all {num_attributes} attributes "
                         "of every image")
    return present


@register_dataset(
        name="cub",
        description="CUB-200-2011: 312 binary attributes (is_present), train_test_split.txt, images.txt order",
        reference="Wah et al., The Caltech-UCSD Birds-200-2011 Dataset (2011); docs/methods.md §1.1",
        card="cub.md",
        class_list=CLASS_LIST,
        formatted_name="cub",
        layout=LAYOUT,
    )
def prepare_cub(req: PrepareRequest) -> PrepareReport:
    base = find_layout_root(Path(req.root), "images.txt", ("", "CUB_200_2011"), LAYOUT)
    classes = load_classnames(CLASS_LIST)
    ids, names = read_images(base / "images.txt")
    index = {image: i for i, image in enumerate(ids)}
    is_train = read_split(base / "train_test_split.txt", index)
    present = read_attribute_labels(base / ATTRIBUTE_LABELS, ids, len(classes))
    items: dict[str, list[SourceImage]] = {"train": [], "test": []}
    for i, name in enumerate(names):
        reader = image_file(base / "images", name, f"{base / 'images.txt'}: image {ids[i]}")
        items["train" if is_train[i] else "test"].append(SourceImage(
            key=name, labels=np.flatnonzero(present[i]).astype(np.int16), ext=image_ext(name, str(base / "images.txt")),
            read=reader, origin=str(reader.path)))
    log.info("cub: %d train, %d test images", len(items["train"]), len(items["test"]))
    source = {
        "layout": "cub-200-2011",
        "root": str(base.resolve()),
        "images_root": str((base / "images").resolve()),
        "image_paths": {"train": "{key}", "test": "{key}"},
        "class_list": CLASS_LIST,
        "empty_labels": "kept",
    }
    return write_from_source(req, "cub", classes, items["train"], items["test"], source)


