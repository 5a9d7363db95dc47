"""The literature's pre-formatted arrays (`formatted_{train,val}_{images,labels,labels_obs}.npy`): import, export.

Their "train" arrays are the official train split (before the 80/20 hold-out, which `write_prepared`
draws) and their "val" arrays are the test split. Image paths are relative to an images folder
(`--images`) and become the row keys. The given observed labels (1 / 0 / −1) of the train file
become the regime `spml-given` over the train rows; both given observation files are also kept,
as int8 copies under `source/`, so that `export_formatted` writes back exactly what was imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.dataset import (
    LabelsTable,
    Observations,
    atomic_folder,
    open_dataset,
    read_observations,
    write_observations,
)
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.datasets import DatasetInfo, PrepareRequest
from mlpl.stages.prepare.observations import official_train_labels, parse_regime, single_positive
from mlpl.stages.prepare.sources import image_ext, image_file, load_classnames, write_from_source
from mlpl.stages.prepare.writer import PrepareReport, SourceImage

log = logging.getLogger(__name__)

GIVEN_REGIME = "spml-given"
GIVEN_DIR = "source"  # inside a prepared dataset: int8 copies of the given labels_obs files
FILE_SPLITS = {"train": "train", "test": "val"}  # official split → the literature's file prefix
KINDS = ("images", "labels", "labels_obs")
DEFAULT_DTYPE = "float64"  # VOC, COCO and NUS files are float64; CUB's are int64 (recorded at import)


def formatted_name(split: str, kind: str) -> str:
    return f"formatted_{FILE_SPLITS[split]}_{kind}.npy"


def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        expected = ", ".join(formatted_name(s, k) for s in FILE_SPLITS for k in KINDS)
        raise InputError(f"{path}: not found; expected the literature's {what} ({expected})")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: not a plain numpy array ({e}); expected {what}") from None


def load_formatted(folder: Path, split: str, num_classes: int) -> dict[str, Any]:
    """The arrays of one official split, checked: images [N] str, labels [N, C] 0/1, labels_obs [N, C] −1/0/1.

    Label matrices come back as int8, with their file dtypes under "dtypes".
    """
    images = _load(folder / formatted_name(split, "images"), "image paths")
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise InputError(f"{folder / formatted_name(split, 'images')}: shape {images.shape}, dtype {images.dtype}; "
                         "expected a 1-D array of image paths")
    out: dict[str, Any] = {"images": images, "dtypes": {}}
    for kind, allowed in (("labels", (0, 1)), ("labels_obs", (-1, 0, 1))):
        path = folder / formatted_name(split, kind)
        if kind == "labels_obs" and split == "test" and not path.is_file():
            out[kind] = None  # only the train file's observations are used; the test file's are optional
            continue
        arr = _load(path, "label matrices")
        if arr.shape != (len(images), num_classes):
            raise InputError(f"{path}: shape {arr.shape}; expected ({len(images)}, {num_classes}) "
                             f"(one row per image of {formatted_name(split, 'images')}, one column per class)")
        bad = ~np.isin(arr, allowed)
        if bad.any():
            r, c = (int(x) for x in np.argwhere(bad)[0])
            raise InputError(f"{path}: row {r}, column {c} is {arr[r, c]}; expected values in {list(allowed)}")
        out[kind] = arr.astype(np.int8)
        out["dtypes"][kind] = str(arr.dtype)
    return out


def prepare_formatted(info: DatasetInfo, req: PrepareRequest) -> PrepareReport:
    folder, images_root = Path(req.from_formatted), Path(req.images)
    classes = load_classnames(info.class_list)
    arrays = {split: load_formatted(folder, split, len(classes)) for split in FILE_SPLITS}
    items: dict[str, list[SourceImage]] = {}
    for split, arr in arrays.items():
        origin = str(folder / formatted_name(split, "images"))
        items[split] = []
        for i, (key, row) in enumerate(zip((str(k) for k in arr["images"]), arr["labels"])):
            reader = image_file(images_root, key, f"{origin}: row {i}")
            items[split].append(SourceImage(key=key, labels=np.flatnonzero(row).astype(np.int16),
                                            ext=image_ext(key, origin), read=reader, origin=str(reader.path)))
    position = {}  # key → row of the given files (rows dropped by --skip-corrupt shift the table's order)
    for split, arr in arrays.items():
        position[split] = {key: i for i, key in enumerate(str(k) for k in arr["images"])}
        if len(position[split]) != len(arr["images"]):
            raise InputError(f"{folder / formatted_name(split, 'images')}: an image path appears twice; "
                             "expected each image once")

    def write_given(tmp: Path, table: LabelsTable) -> None:
        (tmp / GIVEN_DIR).mkdir()
        kept = {}
        for split, rows in official_rows(table).items():
            obs = arrays[split]["labels_obs"]
            if obs is not None:
                kept[split] = obs[[position[split][table.key[r]] for r in rows]]
                np.save(tmp / GIVEN_DIR / formatted_name(split, "labels_obs"), kept[split])
        rows = official_rows(table)["train"]
        train = table.split[rows] == "train"
        params = {"regime": GIVEN_REGIME, "source": str((folder / formatted_name("train", "labels_obs")).resolve()),
                  "equals_spml": bool(np.array_equal(kept["train"], single_positive(table.matrix(rows))))}
        write_observations(tmp, Observations.from_matrix(GIVEN_REGIME, params, rows[train], kept["train"][train]))

    source = {
        "layout": "formatted",
        "formatted_dir": str(folder.resolve()),
        "images_root": str(images_root.resolve()),
        "image_paths": {"train": "{key}", "test": "{key}"},
        "class_list": info.class_list,
        "empty_labels": "kept",
        "given_labels_obs": f"{GIVEN_DIR}/formatted_{{train,val}}_labels_obs.npy (int8)",
        "formatted_dtypes": arrays["train"]["dtypes"],
    }
    return write_from_source(req, info.formatted_name, classes, items["train"], items["test"], source,
                             extra_regimes=write_given)


def official_rows(table: LabelsTable) -> dict[str, np.ndarray]:
    """Rows of the official train split (train ∪ val) and of the test split, each in source order."""
    test = table.rows_of("test")
    return {"train": official_train_labels(table)[0],
            "test": test[np.argsort(table.source_index[test], kind="stable")]}


def _regime_matrices(root: Path, table: LabelsTable, regime: str, official: dict[str, np.ndarray]) -> dict:
    """Observed labels [N, C] per official split (source order) under `regime`, checked against its file."""
    if regime == GIVEN_REGIME:
        out = {}
        for split in FILE_SPLITS:
            path = root / GIVEN_DIR / formatted_name(split, "labels_obs")
            if path.is_file():
                out[split] = np.load(path, allow_pickle=False)
            elif split == "test":
                log.info("%s: absent (none was imported); writing the docs/methods.md §1.2 single positive draw", path)
                out[split] = parse_regime("spml")[0].build(table.matrix(official[split]), {"seed": 1200})
            else:
                raise InputError(f"{path}: not found; the regime {GIVEN_REGIME!r} exists only in datasets imported "
                                 "with --from-formatted")
    else:
        info, params = parse_regime(regime)
        out = {split: info.build(table.matrix(rows), params) for split, rows in official.items()}
    stored = read_observations(root, regime) if (root / "observations" / f"{regime}.parquet").exists() else None
    if stored is not None:
        pos = {int(r): i for i, r in enumerate(official["train"])}
        expect = stored.matrix(len(table.classes))
        got = out["train"][[pos[int(r)] for r in stored.row]]
        if not np.array_equal(expect, got):
            raise InputError(f"{root}/observations/{regime}.parquet: differs from the observations this export "
                             "would write; the dataset was changed after it was prepared")
    return out


def export_formatted(dataset: Path, out: Path, regime: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write `formatted_{train,val}_{images,labels,labels_obs}.npy` of a prepared dataset to `out`.

    train ∪ val rows in source order → `formatted_train_*`, test rows → `formatted_val_*`; images are
    the paths relative to the images folder recorded in dataset.json; labels and observations are
    in the dtypes of the imported files (float64 when the dataset was not imported, as the literature's VOC,
    COCO and NUS files are). `regime` defaults to `spml-given` where it exists, else `spml`.
    """
    ds = open_dataset(dataset)
    table, meta = ds.labels, ds.meta
    patterns = meta.source.get("image_paths") or {}
    regime = regime or (GIVEN_REGIME if GIVEN_REGIME in meta.regimes else "spml")
    official = official_rows(table)
    for split, rows in official.items():
        if len(rows) and not patterns.get(split):
            raise InputError(f"{Path(dataset) / 'dataset.json'}: no image path pattern for the {split} split "
                             "(source.image_paths); export-formatted needs one (the image file names follow no "
                             "single pattern, or the dataset predates it)")
    observed = _regime_matrices(Path(dataset), table, regime, official)
    dtypes = meta.source.get("formatted_dtypes") or {}
    with atomic_folder(Path(out), overwrite=overwrite) as tmp:
        for split, rows in official.items():
            paths = np.array([patterns[split].format(key=table.key[r]) for r in rows], dtype=str)
            np.save(tmp / formatted_name(split, "images"), paths)
            for kind, matrix in (("labels", table.matrix(rows)), ("labels_obs", observed[split])):
                np.save(tmp / formatted_name(split, kind), matrix.astype(dtypes.get(kind, DEFAULT_DTYPE)))
    counts = {FILE_SPLITS[s]: len(r) for s, r in official.items()}
    log.info("exported %s (%s, regime %s) → %s", meta.name, counts, regime, out)
    return {"out": Path(out), "regime": regime, "images_root": meta.source.get("images_root"), "counts": counts}
