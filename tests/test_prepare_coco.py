"""COCO converter: docs/methods.md §1.1 rules on a fixture in the exact 2014 layout, the real coco128, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.stages.prepare import coco

from tests.conftest import run_cli
from tests.prepare_fixtures import labels_by_key, official_train_keys, shard_bytes, split_keys, tiny_image

# JSON category order on purpose not sorted by id, with gaps: classes must follow the JSON order.
CATEGORIES = [{"id": 7, "name": "zebra", "supercategory": "animal"},
              {"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]


def _ann(ann_id: int, image: int, cat: int, crowd: int = 0) -> dict:
    seg = {"counts": [0, 4, 44], "size": [6, 8]} if crowd else [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]
    return {"id": ann_id, "image_id": image, "category_id": cat, "iscrowd": crowd, "area": 4.0,
            "bbox": [0, 0, 4, 4], "segmentation": seg}


def write_coco(root: Path, year: str = "2014", with_val: bool = True) -> dict[str, dict[int, bytes]]:
    """Train ids 9, 10, 100, 25, 3 (3 has no annotation; 25 only a crowd one); val ids 42, 7, 8 (8 empty)."""
    sets = {
        "train": ([9, 10, 100, 25, 3], [_ann(1, 9, 1), _ann(2, 9, 1), _ann(3, 9, 7), _ann(4, 10, 3), _ann(5, 100, 1),
                                        _ann(6, 25, 3, crowd=1), _ann(7, 100, 7)]),
        "val": ([42, 7, 8], [_ann(8, 42, 7), _ann(9, 7, 1), _ann(10, 7, 3, crowd=1)]),
    }
    written: dict[str, dict[int, bytes]] = {}
    for split, (ids, anns) in sets.items():
        if split == "val" and not with_val:
            continue
        folder = f"{split}{year}"
        images = []
        written[split] = {}
        for image_id in ids:
            name = f"COCO_{folder}_{image_id:012d}.jpg" if year == "2014" else f"{image_id:012d}.jpg"
            written[split][image_id] = tiny_image(root / folder / name, seed=image_id)
            images.append({"id": image_id, "file_name": name, "height": 6, "width": 8, "license": 1})
        doc = {"info": {"year": int(year)}, "images": images, "licenses": [{"id": 1, "name": "x"}],
               "annotations": anns, "categories": CATEGORIES}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(doc))
    return written


@pytest.fixture(scope="module")
def coco_fixture(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("coco") / "src"
    written = write_coco(root)
    out = root.parent / "prepared"
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", out, "--rows-per-shard", "2"]) == 0
    return root, out, written


def test_fixture_follows_spec_rules(coco_fixture):
    root, out, written = coco_fixture
    ds = ds_schema.validate(out)
    assert ds.meta.name == "coco2014"
    assert ds.meta.classes == ("zebra", "person", "car")  # JSON order, not id order
    # image 3 (no annotation) dropped; ids ordered as strings: "10" < "100" < "25" < "9"
    assert official_train_keys(out) == ["10", "100", "25", "9"]
    assert split_keys(out, "test") == ["42", "7"]  # val JSON is the test split; 8 has no annotation
    labels = labels_by_key(out)
    assert labels["9"] == ("zebra", "person")  # duplicates collapse
    assert labels["25"] == ("car",)  # a crowd annotation counts
    assert labels["7"] == ("person", "car")
    assert ds.meta.splits == {"train": 3, "val": 1, "test": 2}
    src = ds.meta.source
    assert src["splits"]["train"]["dropped_no_annotation"] == 1 and src["splits"]["train"]["crowd_annotations"] == 1
    assert src["image_paths"]["train"] == "train2014/COCO_train2014_{key:0>12}.jpg"


def test_original_bytes_are_copied(coco_fixture):
    _, out, written = coco_fixture
    got = shard_bytes(out)
    for key, data in got.items():
        split = "val" if int(key) in written["val"] else "train"
        assert data == written[split][int(key)]


def test_2017_layout_and_no_test(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, year="2017", with_val=False)
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", out]) == 2  # val JSON missing
    assert not out.exists()
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", out, "--no-test"]) == 0
    meta = ds_schema.validate(out).meta
    assert meta.name == "coco2017" and meta.splits["test"] == 0
    assert meta.source["image_paths"]["train"] == "train2017/{key:0>12}.jpg"


def test_missing_val_json_names_the_file(tmp_path, capsys):
    root = tmp_path / "coco"
    write_coco(root, with_val=False)
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", tmp_path / "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "instances_val2014.json: not found" in err and "--no-test" in err


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing_root", "--root"),
        ("no_images", "instances_train2014.json: no 'images' list"),
        ("corrupt_image", "COCO_train2014_000000000010.jpg: not a decodable image"),
        ("missing_image", "COCO_train2014_000000000009.jpg: cannot read"),
        ("unknown_category", "category_id 99"),
        ("both_years", "--year"),
        ("truncated_json", "instances_train2014.json: not valid JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, breakage, expected):
    root = tmp_path / "coco"
    write_coco(root)
    train_json = root / "annotations" / "instances_train2014.json"
    if breakage == "missing_root":
        root = tmp_path / "nowhere"
    elif breakage == "no_images":
        doc = json.loads(train_json.read_text())
        del doc["images"]
        train_json.write_text(json.dumps(doc))
    elif breakage == "corrupt_image":
        (root / "train2014" / "COCO_train2014_000000000010.jpg").write_bytes(b"not a jpeg at all")
    elif breakage == "missing_image":
        (root / "train2014" / "COCO_train2014_000000000009.jpg").unlink()
    elif breakage == "unknown_category":
        doc = json.loads(train_json.read_text())
        doc["annotations"][0]["category_id"] = 99
        train_json.write_text(json.dumps(doc))
    elif breakage == "both_years":
        write_coco(root, year="2017")
    elif breakage == "truncated_json":
        train_json.write_text(train_json.read_text()[:-40])
    out = tmp_path / "out" / "p"
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert expected in err
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))  # no temporary folder left behind


def test_skip_corrupt_drops_and_lists(tmp_path):
    root = tmp_path / "coco"
    write_coco(root)
    bad = root / "train2014" / "COCO_train2014_000000000010.jpg"
    bad.write_bytes(b"garbage")
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "coco", "--root", root, "--out", out, "--skip-corrupt"]) == 0
    meta = ds_schema.validate(out).meta
    assert meta.source["skipped_corrupt"] == [str(bad)]
    assert "10" not in official_train_keys(out)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_json_stream_matches_json_load(tmp_path, chunk, monkeypatch):
    write_coco(tmp_path)
    path = tmp_path / "annotations" / "instances_train2014.json"
    init = coco.JsonStream.__init__
    monkeypatch.setattr(coco.JsonStream, "__init__", lambda self, fh, p, chunk_=chunk: init(self, fh, p, chunk_))
    got: dict = {}
    for key, value in coco.iter_top_level(path, frozenset({"images", "annotations", "categories"})):
        if key in ("images", "annotations", "categories"):
            got.setdefault(key, []).append(value)
        else:
            got[key] = value
    assert got == json.loads(path.read_text())


# ---------------------------------------------------------------- the real coco128 (skipped when absent)

@pytest.fixture(scope="module")
def coco128(tmp_path_factory) -> tuple[Path, Path]:
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
    if not src.is_dir():
        pytest.skip("../shared/data/coco128 is not present")
    out = tmp_path_factory.mktemp("coco128") / "prepared"
    assert run_cli(["prepare", "--dataset", "coco", "--root", src, "--out", out, "--no-test"]) == 0
    return src, out


def test_coco128_known_facts(coco128):
    src, out = coco128
    ds = ds_schema.validate(out)
    assert ds.meta.splits == {"train": 101, "val": 25, "test": 0}  # 126 of 128 images kept
    assert ds.meta.num_classes == 80
    doc = json.loads((src / "annotations" / "instances_train2017.json").read_text())
    assert ds.meta.classes == tuple(c["name"] for c in doc["categories"])
    assert ds.meta.classes == coco.load_classnames("coco.txt")  # the JSON order is the literature's order
    labels = labels_by_key(out)
    assert set(labels["9"]) == {"bowl", "broccoli", "orange"}
    assert labels["25"] == ("giraffe",)
    assert set(labels["74"]) == {"bicycle", "dog", "person"}
    assert "250" not in labels and "508" not in labels  # the two images without annotations
    assert official_train_keys(out) == sorted(str(i["id"]) for i in doc["images"] if str(i["id"]) not in ("250", "508"))
    assert np.isclose(np.mean([len(v) for v in labels.values()]), 2.87, atol=0.005)


def test_coco128_crowd_annotations_count(coco128):
    src, out = coco128
    doc = json.loads((src / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == 10
    labels = labels_by_key(out)
    for a in crowd:
        assert names[a["category_id"]] in labels[str(a["image_id"])]
    # (in coco128 every crowd pair also has a plain annotation; the fixture above has a crowd-only label)
    assert ds_schema.read_labels(out / "labels.parquet").matrix().sum() == len(
        {(a["image_id"], a["category_id"]) for a in doc["annotations"]})


def test_coco128_bytes_are_the_files(coco128):
    src, out = coco128
    got = shard_bytes(out)
    for key in ("9", "25", "74"):
        assert got[key] == (src / "train2017" / f"{int(key):012d}.jpg").read_bytes()
