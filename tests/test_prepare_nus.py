"""NUS-WIDE converter on a fixture in the official layout (backslash lists, CRLF, images with no label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.stages.prepare.sources import load_classnames

from tests.conftest import run_cli
from tests.prepare_fixtures import labels_by_key, official_train_keys, shard_bytes, split_keys, tiny_image, write_lines

CONCEPTS = load_classnames("nuswide.txt")

TRAIN = {"actor\\0001_2124494179.jpg": ("person", "street"), "beach\\0002_100.jpg": (),  # no label: kept
         "beach\\0003_101.jpg": ("beach", "sand", "water"), "zoo\\0004_7.jpg": ("zebra",)}
TEST = {"sky\\0005_8.jpg": ("sky",), "sky\\0006_9.jpg": ()}


def write_nus(root: Path) -> dict[str, bytes]:
    written = {}
    for name, images in (("Train", TRAIN), ("Test", TEST)):
        write_lines(root / "ImageList" / f"{name}Imagelist.txt", list(images), crlf=True)
        for concept in CONCEPTS:
            # the official files are "0\r\n" / "1\r\n", some with a trailing space
            values = [f"{int(concept in labels)} " if i % 2 else str(int(concept in labels))
                      for i, labels in enumerate(images.values())]
            write_lines(root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{name}.txt", values, crlf=True)
        for i, entry in enumerate(images):
            key = entry.replace("\\", "/")
            written[key] = tiny_image(root / "Flickr" / key, seed=len(written) + i)
    return written


@pytest.fixture(scope="module")
def nus(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("nus") / "NUS-WIDE"
    written = write_nus(root)
    out = root.parent / "prepared"
    assert run_cli(["prepare", "--dataset", "nus", "--root", root, "--out", out]) == 0
    return root, out, written


def test_official_layout(nus):
    _, out, written = nus
    ds = ds_schema.validate(out)
    assert ds.meta.name == "nus" and ds.meta.classes == CONCEPTS and len(CONCEPTS) == 81
    assert official_train_keys(out) == [k.replace("\\", "/") for k in TRAIN]  # list order, all kept
    assert split_keys(out, "test") == [k.replace("\\", "/") for k in TEST]
    labels = labels_by_key(out)
    for entry, expected in (TRAIN | TEST).items():
        assert labels[entry.replace("\\", "/")] == expected
    assert ds.meta.source["splits"]["train"]["no_positive"] == 1
    assert shard_bytes(out) == written


def test_pool_lists_choose_and_order_rows(tmp_path, nus):
    root, _, _ = nus
    pool = tmp_path / "pool"
    pool.mkdir()
    # the literature's lists: paths under Flickr/, their "val" is the test split; order is theirs
    np.save(pool / "formatted_train_images.npy", np.array(["zoo/0004_7.jpg", "actor/0001_2124494179.jpg",
                                                           "beach\\0002_100.jpg"]))
    np.save(pool / "formatted_val_images.npy", np.array(["sky/0006_9.jpg"]))
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "nus", "--root", root, "--out", out, "--pool", pool]) == 0
    assert official_train_keys(out) == ["zoo/0004_7.jpg", "actor/0001_2124494179.jpg", "beach/0002_100.jpg"]
    labels = labels_by_key(out)
    assert labels["zoo/0004_7.jpg"] == ("zebra",) and labels["sky/0006_9.jpg"] == ()
    assert ds_schema.validate(out).meta.splits == {"train": 2, "val": 1, "test": 1}


def test_pool_entry_not_in_official_lists(tmp_path, nus, capsys):
    root, _, _ = nus
    pool = tmp_path / "pool"
    pool.mkdir()
    np.save(pool / "formatted_train_images.npy", np.array(["zoo/9999_1.jpg"]))
    np.save(pool / "formatted_val_images.npy", np.array(["sky/0006_9.jpg"]))
    assert run_cli(["prepare", "--dataset", "nus", "--root", root, "--out", tmp_path / "p", "--pool", pool]) == 2
    err = capsys.readouterr().err
    assert "formatted_train_images.npy: 1 images are in no official image list (e.g. 'zoo/9999_1.jpg')" in err


@pytest.mark.parametrize("how, expected", [
    ("short_labels", "Labels_sky_Train.txt: 3 labels; expected 4, one per line of the image list"),
    ("bad_value", "Labels_cat_Test.txt: entry 2 is '7'; expected 0 or 1"),
    ("missing_concept", "Labels_zebra_Test.txt: not found; expected ImageList/{Train,Test}Imagelist.txt"),
    ("missing_list", "TestImagelist.txt: not found"),
    ("wrong_root", "no ImageList/ folder; expected the NUS-WIDE layout"),
])
def test_bad_layout_names_the_file(tmp_path, capsys, how, expected):
    root = tmp_path / "NUS-WIDE"
    write_nus(root)
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    if how == "short_labels":
        write_lines(labels_dir / "Labels_sky_Train.txt", ["0", "0", "1"])
    elif how == "bad_value":
        write_lines(labels_dir / "Labels_cat_Test.txt", ["0", "7"])
    elif how == "missing_concept":
        (labels_dir / "Labels_zebra_Test.txt").unlink()
    elif how == "missing_list":
        (root / "ImageList" / "TestImagelist.txt").unlink()
    elif how == "wrong_root":
        root = root / "Flickr"
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "nus", "--root", root, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
