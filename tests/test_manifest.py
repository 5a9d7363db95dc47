"""`mlpl prepare --dataset manifest`: every manifest form, the label semantics, unknown full labels, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlpl.schemas.dataset import (
    DATASET_JSON,
    LABELS_PARQUET,
    DatasetMeta,
    UnknownFullLabels,
    open_dataset,
    read_labels,
    validate,
)
from mlpl.schemas.labels import Observed

from tests.conftest import run_cli

# one row per image: (image, split, labels, positives, negatives); None = unknown / not given
ROWS = [
    ("a.jpg", "train", None, ["cat"], None),
    ("b.jpg", "train", None, ["dog"], ["bird"]),
    ("c.png", "train", None, None, None),  # unlabelled image: stays
    ("sub/d.jpg", "train", ["cat", "dog"], ["cat"], None),
    ("e.jpg", "val", ["cat", "bird"], None, None),
    ("f.jpg", "val", [], None, None),  # known to hold none of the classes
    ("g.jpg", "test", ["dog"], None, None),
]
COLUMNS = ("image", "split", "labels", "positives", "negatives")


def make_images(root: Path, names: list[str]) -> Path:
    from PIL import Image

    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), 20 * i, dtype=np.uint8)).save(path)
    return root


def cell(names: list[str] | None) -> str:
    return "" if names is None else ("-" if not names else "|".join(names))


def write_manifest(path: Path, rows: list[tuple], columns: tuple[str, ...] = COLUMNS) -> Path:
    kind = path.suffix
    if kind in (".csv", ".tsv"):
        sep = "," if kind == ".csv" else "\t"
        lines = [sep.join(columns)] + [sep.join(v if isinstance(v, str) else cell(v) for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    else:
        types = {"image": pa.string(), "split": pa.string()}
        schema = pa.schema([(c, types.get(c, pa.list_(pa.string()))) for c in columns])
        pq.write_table(pa.Table.from_pylist([dict(zip(columns, r)) for r in rows], schema=schema), path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_images(tmp_path / "images", [r[0] for r in ROWS] + ["extra.jpg"])


def prepare(tmp_path: Path, manifest: Path, images: Path, *extra: str, out: str = "ds") -> int:
    return run_cli(["prepare", "--dataset", "manifest", "--manifest", manifest, "--images", images,
                    "--out", tmp_path / out, *extra])


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_form_gives_the_same_dataset(tmp_path, images, suffix):
    manifest = write_manifest(tmp_path / f"m{suffix}", ROWS)
    assert prepare(tmp_path, manifest, images) == 0
    ds = validate(tmp_path / "ds")
    assert ds.meta.classes == ("bird", "cat", "dog")  # the sorted union of the names seen
    assert ds.meta.splits == {"train": 4, "val": 2, "test": 1}
    assert ds.meta.regimes == ("given",) and ds.meta.family == "generic"
    lab = ds.labels
    assert lab.key[:4] == ["a.jpg", "b.jpg", "c.png", "sub/d.jpg"]
    assert lab.known_of().tolist() == [False, False, False, True, True, True, True]
    assert [x.tolist() for x in lab.labels[3:]] == [[1, 2], [0, 1], [], [2]]
    # m measured on the val split's full labels: (2 + 0) / 2
    assert ds.meta.expected_positives == 1.0 and "val split" in ds.meta.m_source
    obs = ds.observations("given").matrix(3)
    P, N, U = int(Observed.POSITIVE), int(Observed.NEGATIVE), int(Observed.UNKNOWN)
    assert obs.tolist() == [[U, P, U], [N, U, P], [U, U, U], [U, P, U]]


def test_unknown_full_labels_are_said_everywhere(tmp_path, images, capsys):
    manifest = write_manifest(tmp_path / "m.csv", ROWS)
    assert prepare(tmp_path, manifest, images) == 0
    lab = read_labels(tmp_path / "ds" / LABELS_PARQUET)
    with pytest.raises(UnknownFullLabels, match="unknown full labels for 3 of 4 rows"):
        lab.matrix(np.arange(4))
    assert lab.matrix(np.arange(4), unknown_as_empty=True).sum() == 2
    # a null cell is stored as null, not as an empty list
    assert pq.read_table(tmp_path / "ds" / LABELS_PARQUET).column("labels").null_count == 3
    assert run_cli(["observe", tmp_path / "ds", "--regime", "spml"]) == 2
    assert "unknown full labels for 3" in capsys.readouterr().err
    assert run_cli(["verify", tmp_path / "ds"]) == 0
    assert "train: 4 images, unknown full labels for 3 of 4 rows" in capsys.readouterr().out


def test_classes_file_keeps_its_order_and_simulated_regimes_need_full_labels(tmp_path, images, capsys):
    rows = [(r[0], r[1], r[2] if r[2] is not None else (r[3] or []), r[3], None) for r in ROWS]  # all labelled
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    (tmp_path / "classes.txt").write_text("dog\ncat\n\nbird\nfish\n")
    assert prepare(tmp_path, manifest, images, "--classes", tmp_path / "classes.txt", "--regime", "spml",
                   "--family", "coco") == 0
    ds = open_dataset(tmp_path / "ds")
    assert ds.meta.classes == ("dog", "cat", "bird", "fish") and ds.meta.regimes == ("given", "spml")
    assert ds.meta.family == "coco" and ds.meta.expected_positives is None
    assert ds.labels.all_known()


def test_hold_out_when_train_labels_known_else_no_val(tmp_path, images):
    known = [(r[0], "train", r[2] or ["cat"], None, None) for r in ROWS]
    assert prepare(tmp_path, write_manifest(tmp_path / "k.csv", known), images, out="k") == 0
    meta = DatasetMeta.from_json(tmp_path / "k" / DATASET_JSON)
    assert meta.splits == {"train": 6, "val": 1, "test": 0} and meta.source["val_heldout"]
    unknown = [r for r in ROWS if r[1] == "train"]
    assert prepare(tmp_path, write_manifest(tmp_path / "u.csv", unknown), images, out="u") == 0
    meta = DatasetMeta.from_json(tmp_path / "u" / DATASET_JSON)
    assert meta.splits == {"train": 4, "val": 0, "test": 0} and meta.source["val"].startswith("none")
    assert meta.expected_positives is None and "default" in meta.m_source


def test_absolute_paths_and_default_images_folder(tmp_path, images):
    rows = [(str(images / "a.jpg"), "", None, ["cat"], None), ("b.jpg", "", None, ["dog"], None)]
    manifest = write_manifest(images / "m.csv", rows)
    assert run_cli(["prepare", "--dataset", "manifest", "--manifest", manifest, "--out", tmp_path / "ds"]) == 0
    assert open_dataset(tmp_path / "ds").meta.splits["train"] == 2


def test_version_1_datasets_stay_readable(digits_small):
    ds = validate(digits_small)  # written by this version; rewrite its files as version 1 would
    assert ds.labels.known is None and ds.labels.all_known()


def test_version_1_files_read(tmp_path, digits_small):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(digits_small, old)
    meta = json.loads((old / DATASET_JSON).read_text())
    for key in ("family", "expected_positives", "m_source"):
        meta.pop(key)
    meta["version"] = 1
    (old / DATASET_JSON).write_text(json.dumps(meta))
    table = pq.read_table(old / LABELS_PARQUET)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"mlpl.version": b"1"}),
                   old / LABELS_PARQUET)
    ds = validate(old)
    assert ds.meta.version == 1 and ds.meta.family == "" and ds.labels.all_known()


def _bad(tmp_path, images, rows, suffix=".csv", columns=COLUMNS, extra=()) -> str:
    manifest = write_manifest(tmp_path / f"bad{suffix}", rows, columns)
    code = prepare(tmp_path, manifest, images, *extra, out="bad")
    assert code == 2 and not (tmp_path / "bad").exists()  # nothing written
    return manifest


@pytest.mark.parametrize("rows, expected", [
    ([("missing.jpg", "train", None, ["cat"], None)], r"bad.csv:2, column 'image': image file .*missing.jpg not found"),
    ([("a.jpg", "train", None, ["cat"], None), ("e.jpg", "val", None, None, None)],
     r"bad.csv:3, column 'labels': a val row without full labels"),
    ([("a.jpg", "train", None, ["cat"], None), ("./a.jpg", "train", None, None, None)],
     r"bad.csv:3, column 'image': './a.jpg' is the same image as .*bad.csv:2"),
    ([], r"bad.csv: the manifest has no rows"),
    ([("e.jpg", "val", ["cat"], None, None)], r"the train split is empty"),
    ([("a.jpg", "training", None, ["cat"], None)], r"bad.csv:2, column 'split': 'training'; expected one of"),
    ([("a.jpg", "train", ["dog"], ["cat"], None)], r"bad.csv:2: observed labels \['cat'\] contradict"),
    ([("a.jpg", "train", None, ["cat"], ["cat"])], r"\['cat'\] are both positives and negatives"),
    ([("a.jpg", "train", None, "cat||dog", None)], r"bad.csv:2, column 'positives': 'cat\|\|dog' has an empty"),
    ([("notes.txt", "train", None, ["cat"], None)], r"neither .jpg/.jpeg nor .png"),
    ([("../images/a.jpg", "train", None, ["cat"], None)], r"bad.csv:2, column 'image': image path .* leaves"),
])
def test_bad_rows(tmp_path, images, capsys, rows, expected):
    (images / "notes.txt").write_text("x")
    _bad(tmp_path, images, rows)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(expected, err), err


def test_unknown_class_names_are_listed_with_their_first_rows(tmp_path, images, capsys):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    rows = [("a.jpg", "train", None, ["cat"], None), ("b.jpg", "train", None, ["zebra"], ["yak"]),
            ("c.png", "train", None, ["zebra"], None)]
    _bad(tmp_path, images, rows, extra=("--classes", tmp_path / "classes.txt"))
    err = capsys.readouterr().err
    assert "2 class names are not in --classes" in err
    assert "'yak' at " in err and "bad.csv:3, column 'negatives'" in err
    assert "'zebra' at " in err and "bad.csv:3, column 'positives'" in err


@pytest.mark.parametrize("suffix, value, expected", [
    (".jsonl", "cat", r"bad.jsonl:1, column 'positives': 'cat' is not a list of class names"),
    (".jsonl", [1, 2], r"bad.jsonl:1, column 'positives': \[1, 2\] is not a list of class names"),
])
def test_label_column_of_the_wrong_type_jsonl(tmp_path, images, capsys, suffix, value, expected):
    _bad(tmp_path, images, [("a.jpg", "train", None, value, None)], suffix)
    assert __import__("re").search(expected, capsys.readouterr().err)


def test_label_column_of_the_wrong_type_parquet(tmp_path, images, capsys):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": ["a.jpg"], "positives": ["cat"]}), path)
    assert prepare(tmp_path, path, images, out="bad") == 2
    assert "column 'positives': type string; expected a list of class names" in capsys.readouterr().err


def test_bad_options_and_columns(tmp_path, images, capsys):
    ok = write_manifest(tmp_path / "m.csv", ROWS)
    assert prepare(tmp_path, ok, images, "--family", "imagenet", out="x") == 2
    assert "unknown hyperparameter family 'imagenet'" in capsys.readouterr().err
    typo = write_manifest(tmp_path / "t.csv", [("a.jpg", "train", ["cat"])], ("image", "split", "label"))
    assert prepare(tmp_path, typo, images, out="x") == 2
    assert "unknown column 'label'; did you mean 'labels'?" in capsys.readouterr().err
    noimage = write_manifest(tmp_path / "n.csv", [("a.jpg",)], ("path",))
    assert prepare(tmp_path, noimage, images, out="x") == 2
    assert "no 'image' column" in capsys.readouterr().err
    assert prepare(tmp_path, ok, images, "--root", images, out="x") == 2
    assert "--root: dataset 'manifest' takes no --root (its images are under --images)" in capsys.readouterr().err
    (tmp_path / "m.txt").write_text("image\na.jpg\n")
    assert prepare(tmp_path, tmp_path / "m.txt", images, out="x") == 2
    assert "a manifest must end in one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_training_without_a_val_split_keeps_the_last_epoch_and_says_so(tmp_path, images, capsys):
    from mlpl.schemas import run as run_schema

    rows = [r for r in ROWS if r[1] == "train"] + [("extra.jpg", "test", ["cat"], None, None)]
    assert prepare(tmp_path, write_manifest(tmp_path / "m.csv", rows), images, "--family", "coco") == 0
    run = tmp_path / "run"
    assert run_cli(["train", "--dataset", tmp_path / "ds", "--method", "an", "--regime", "given", "--out", run,
                    "--epochs", "2", "--batch-size", "2", "--image-size", "16", "--backbone", "small-cnn",
                    "--no-pretrained", "--workers", "0"]) == 0
    summary = run_schema.read_summary(run)
    assert summary.val is None and summary.test is not None and summary.best_epoch == 2
    assert any("no val split" in note and "the last epoch is kept" in note for note in summary.notes)
    assert "no val split" in capsys.readouterr().out
    assert [r["split"] for r in run_schema.read_metrics(run)] == ["train", "train", "test"]
