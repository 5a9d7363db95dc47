"""VOC 2012 / 2007 converters on fixtures in the exact `VOCdevkit/VOC<year>/ImageSets/Main` layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.stages.prepare.sources import load_classnames

from tests.conftest import run_cli
from tests.prepare_fixtures import labels_by_key, official_train_keys, shard_bytes, split_keys, tiny_image, write_lines

CLASSES = load_classnames("voc.txt")

# name → {class: value}; classes not named are -1. "difficult" images have only 0 (difficult) entries.
TRAIN = {
    "2008_000005": {"dog": 1, "person": 1},
    "2008_000001": {"cat": 1, "dog": 0},  # a difficult dog is negative
    "2008_000003": {"car": 0},  # difficult only: no positive, dropped
    "2007_000032": {"aeroplane": 1},
    "2008_000002": {},  # nothing at all: dropped
}
TEST = {"2009_000010": {"tvmonitor": 1}, "2009_000002": {"bird": 1, "boat": 1}, "2009_000001": {"bus": 0}}


def write_voc(base: Path, sets: dict[str, dict[str, dict[str, int]]], crlf_classes: tuple[str, ...] = ()) -> dict:
    """Per-class files in the original form ("name  1" with two spaces before non-negative labels)."""
    written = {}
    for set_name, images in sets.items():
        for cls in CLASSES:
            lines = []
            for name, labels in images.items():
                value = labels.get(cls, -1)
                lines.append(f"{name} {value:2d}")
            write_lines(base / "ImageSets" / "Main" / f"{cls}_{set_name}.txt", lines, crlf=cls in crlf_classes)
        for i, name in enumerate(images):
            written[name] = tiny_image(base / "JPEGImages" / f"{name}.jpg", seed=i + len(written))
    return written


@pytest.fixture(scope="module")
def voc2012(tmp_path_factory) -> tuple[Path, Path, dict]:
    top = tmp_path_factory.mktemp("voc")
    base = top / "VOCdevkit" / "VOC2012"
    written = write_voc(base, {"train": TRAIN, "val": TEST}, crlf_classes=("dog", "cat", "person"))
    out = top / "prepared"
    assert run_cli(["prepare", "--dataset", "voc2012", "--root", top / "VOCdevkit", "--out", out]) == 0
    return top, out, written


def test_voc2012_rules(voc2012):
    _, out, written = voc2012
    ds = ds_schema.validate(out)
    assert ds.meta.name == "voc2012" and ds.meta.classes == CLASSES
    # sorted names; difficult-only and empty images dropped
    assert official_train_keys(out) == ["2007_000032", "2008_000001", "2008_000005"]
    assert split_keys(out, "test") == ["2009_000002", "2009_000010"]
    labels = labels_by_key(out)
    assert labels["2008_000001"] == ("cat",)  # CRLF files read; difficult dog is negative
    assert labels["2008_000005"] == ("dog", "person")
    assert ds.meta.source["splits"]["train"] == {"set": "train", "listed": 5, "dropped_no_positive": 2}
    assert ds.meta.source["image_paths"] == {"train": "{key}.jpg", "test": "{key}.jpg"}
    assert all(shard_bytes(out)[k] == written[k] for k in labels)


def test_voc2007_trainval_test_from_parent_folder(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc(base, {"trainval": TRAIN, "test": TEST})
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "voc2007", "--root", tmp_path, "--out", out]) == 0
    ds = ds_schema.validate(out)
    assert ds.meta.name == "voc2007" and ds.meta.num_rows == 5
    assert ds.meta.source["test"] == "test"


def test_voc2007_without_test_tar(tmp_path):
    base = tmp_path / "VOC2007"
    write_voc(base, {"trainval": TRAIN})
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "voc2007", "--root", base, "--out", out, "--no-test"]) == 0
    assert ds_schema.validate(out).meta.splits["test"] == 0


def _break(base: Path, how: str) -> str:
    main = base / "ImageSets" / "Main"
    if how == "missing_class_file":
        (main / "sofa_train.txt").unlink()
        return "sofa_train.txt: not found; expected VOCdevkit/VOC2012/ImageSets/Main/<class>_{train,val}.txt"
    if how == "bad_value":
        lines = (main / "cow_train.txt").read_text().splitlines()
        lines[2] = "2008_000003  2"
        write_lines(main / "cow_train.txt", lines)
        return "cow_train.txt:3: the label is 2; expected one of [1, 0, -1]"
    if how == "bad_line":
        write_lines(main / "cow_train.txt", ["2008_000005"])
        return "cow_train.txt:1: '2008_000005'; expected '<image name> <1|0|-1>'"
    if how == "inconsistent":
        lines = (main / "horse_train.txt").read_text().splitlines()
        write_lines(main / "horse_train.txt", lines[:-1])
        return "horse_train.txt: lists 4 images, aeroplane_train.txt lists 5"
    if how == "missing_image":
        (base / "JPEGImages" / "2008_000005.jpg").unlink()
        return "JPEGImages/2008_000005.jpg: cannot read"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_class_file", "bad_value", "bad_line", "inconsistent", "missing_image"])
def test_bad_layout_names_the_file(tmp_path, capsys, how):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    write_voc(base, {"train": TRAIN, "val": TEST})
    expected = _break(base, how)
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "voc2012", "--root", base, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_wrong_root_names_the_expected_layout(tmp_path, capsys):
    (tmp_path / "somewhere").mkdir()
    assert run_cli(["prepare", "--dataset", "voc2012", "--root", tmp_path / "somewhere", "--out", tmp_path / "p"]) == 2
    err = capsys.readouterr().err
    assert "ImageSets/Main not found" in err and "VOCdevkit/VOC2012/ImageSets/Main" in err


def test_coco_only_option_is_refused(tmp_path, capsys):
    base = tmp_path / "VOC2012"
    write_voc(base, {"train": TRAIN, "val": TEST})
    assert run_cli(["prepare", "--dataset", "voc2012", "--root", base, "--out", tmp_path / "p", "--year", "2014"]) == 2
    assert "--year: not an option of dataset 'voc2012'" in capsys.readouterr().err
