"""NUS-WIDE (the official `ImageList` + `Groundtruth/TrainTestLabels` layout) → prepared dataset, docs/methods.md §1.1.

81 concepts (the shipped `nuswide.txt`, the official `Concepts81` order); one 0/1 per line in
`Labels_<concept>_{Train,Test}.txt`, aligned with `ImageList/{Train,Test}Imagelist.txt`, whose
entries are Windows paths (`actor\\0001_2124494179.jpg`) under `Flickr/`. Images with no positive
are kept. Rows are in list order. With `--pool DIR` (the literature's re-crawled 150,000 / 60,260
images: `formatted_train_images.npy`, `formatted_val_images.npy`, whose "val" is the test split), the
rows are those lists in their order, with labels looked up in the official ground truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.sources import (
    image_ext,
    image_file,
    load_classnames,
    read_lines,
    require_file,
    write_from_source,
)
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

CLASS_LIST = "nuswide.txt"
OFFICIAL = {"train": "Train", "test": "Test"}
POOL_FILES = {"train": "formatted_train_images.npy", "test": "formatted_val_images.npy"}
LAYOUT = ("ImageList/{Train,Test}Imagelist.txt, Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt "
          "(81 concepts) and the images under Flickr/<folder>/<file>.jpg")


def image_key(entry: str) -> str:
    """An image-list entry as a path under `Flickr/`: backslashes → '/', a leading 'Flickr/' or './' dropped."""
    key = entry.strip().replace("\\", "/")
    for prefix in ("./", "Flickr/"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def read_image_list(path: Path) -> list[str]:
    return [image_key(line) for _, line in read_lines(path, LAYOUT)]


def read_concept_column(path: Path, n: int) -> np.ndarray:
    """One `Labels_<concept>_<Split>.txt` as a bool vector of length n (one 0/1 per line)."""
    require_file(path, LAYOUT)
    tokens = np.array(path.read_bytes().split())
    if len(tokens) != n:
        raise InputError(f"{path}: {len(tokens)} labels; expected {n}, one per line of the image list")
    bad = ~np.isin(tokens, (b"0", b"1"))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: entry {i + 1} is {tokens[i].decode(errors='replace')!r}; expected 0 or 1")
    return tokens == b"1"


def read_official_split(root: Path, split: str, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """(keys, bool labels [n, C]) of the official Train or Test list."""
    name = OFFICIAL[split]
    keys = read_image_list(root / "ImageList" / f"{name}Imagelist.txt")
    labels = np.zeros((len(keys), len(classes)), dtype=bool)
    for c, concept in enumerate(classes):
        labels[:, c] = read_concept_column(root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{name}.txt",
                                           len(keys))
    return keys, labels


def read_pool(pool: Path, split: str) -> list[str]:
    lists = sorted(POOL_FILES.values())
    path = require_file(pool / POOL_FILES[split], f"the literature's image lists {lists} in --pool")
    try:
        entries = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: not a numpy array of strings ({e})") from None
    if entries.ndim != 1 or entries.dtype.kind not in "US":
        raise InputError(f"{path}: shape {entries.shape}, dtype {entries.dtype}; expected a 1-D array of image paths")
    return [image_key(e.decode() if isinstance(e, bytes) else str(e)) for e in entries]


def _items(root: Path, keys: list[str], labels: np.ndarray, origin: str) -> list[SourceImage]:
    items = []
    for i, (key, row) in enumerate(zip(keys, labels)):
        reader = image_file(root / "Flickr", key, f"{origin}: entry {i + 1}")
        items.append(SourceImage(key=key, labels=np.flatnonzero(row).astype(np.int16), ext=image_ext(key, origin),
                                 read=reader, origin=str(reader.path)))
    return items


@register_dataset(
        name="nus",
        description="NUS-WIDE: 81 concepts, official lists or the literature's re-crawled pool (--pool), "
                    "images with no positive kept",
        reference="Chua et al., NUS-WIDE (CIVR 2009); docs/methods.md §1.1",
        options=("pool",),
        card="nus.md",
        class_list=CLASS_LIST,
        formatted_name="nus",
        layout=LAYOUT,
    )
def prepare_nus(req: PrepareRequest) -> PrepareReport:
    root = Path(req.root)
    if not (root / "ImageList").is_dir():
        raise InputError(f"--root {root}: no ImageList/ folder; expected the NUS-WIDE layout {LAYOUT}")
    classes = load_classnames(CLASS_LIST)
    official = {split: read_official_split(root, split, classes) for split in OFFICIAL}
    pool = req.options.get("pool")
    items: dict[str, list[SourceImage]] = {}
    counts: dict[str, Any] = {}
    if pool is None:
        for split, (keys, labels) in official.items():
            items[split] = _items(root, keys, labels, f"{root}/ImageList/{OFFICIAL[split]}Imagelist.txt")
            counts[split] = {"images": len(keys), "no_positive": int((~labels.any(axis=1)).sum())}
    else:
        pool = Path(pool)
        where = {key: (split, i) for split, (keys, _) in official.items() for i, key in enumerate(keys)}
        for split in POOL_FILES:
            keys = read_pool(pool, split)
            missing = [k for k in keys if k not in where]
            if missing:
                raise InputError(f"{pool / POOL_FILES[split]}: {len(missing)} images are in no official image "
                                 f"list (e.g. {missing[0]!r}); expected paths like 'actor/0001_2124494179.jpg'")
            labels = np.zeros((len(keys), len(classes)), dtype=bool)
            for i, key in enumerate(keys):
                labels[i] = official[where[key][0]][1][where[key][1]]
            items[split] = _items(root, keys, labels, str(pool / POOL_FILES[split]))
            counts[split] = {"images": len(keys), "no_positive": int((~labels.any(axis=1)).sum()),
                             "list": str((pool / POOL_FILES[split]).resolve())}
    for split, c in counts.items():
        log.info("nus %s: %d images, %d with no positive (kept)", split, c["images"], c["no_positive"])
    source = {
        "layout": "nus-wide" + (" (re-crawled pool)" if pool is not None else " (official lists)"),
        "root": str(root.resolve()),
        "images_root": str((root / "Flickr").resolve()),
        "image_paths": {"train": "{key}", "test": "{key}"},
        "splits": counts,
        "class_list": CLASS_LIST,
        "empty_labels": "kept",
    }
    return write_from_source(req, "nus", classes, items["train"], items["test"], source)


