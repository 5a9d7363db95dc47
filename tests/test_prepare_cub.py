"""CUB-200-2011 converter on a fixture in the original layout (extra fields on some lines, CRLF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.stages.prepare import cub
from mlpl.stages.prepare.sources import load_classnames

from tests.conftest import run_cli
from tests.prepare_fixtures import labels_by_key, official_train_keys, shard_bytes, split_keys, tiny_image, write_lines

ATTRIBUTES = load_classnames("cub.txt")
IMAGES = ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
          "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
          "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
          "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg",
          "200.Common_Yellowthroat/Common_Yellowthroat_0049_190708.jpg"]
IS_TRAIN = [1, 0, 1, 1, 0]


def present_matrix() -> np.ndarray:
    rng = np.random.RandomState(3)
    m = rng.random_sample((len(IMAGES), len(ATTRIBUTES))) < 0.1
    m[4] = False  # an image with no attribute present
    return m


def write_cub(top: Path) -> dict[str, bytes]:
    base = top / "CUB_200_2011"
    write_lines(base / "images.txt", [f"{i + 1} {name}" for i, name in enumerate(IMAGES)])
    write_lines(base / "train_test_split.txt", [f"{i + 1} {t}" for i, t in enumerate(IS_TRAIN)], crlf=True)
    present = present_matrix()
    lines = []
    for i in range(len(IMAGES)):
        for a in range(len(ATTRIBUTES)):
            line = f"{i + 1} {a + 1} {int(present[i, a])} {1 + (a % 4)} {(a % 7) * 1.5:.3f}"
            if (i, a) in ((0, 5), (2, 100), (3, 311)):
                line += " 0 2.5"  # the real file has a few lines with extra fields
            lines.append(line)
    write_lines(base / cub.ATTRIBUTE_LABELS, lines)
    return {name: tiny_image(base / "images" / name, seed=i) for i, name in enumerate(IMAGES)}


@pytest.fixture(scope="module")
def cub_prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    top = tmp_path_factory.mktemp("cub")
    written = write_cub(top)
    out = top / "prepared"
    assert run_cli(["prepare", "--dataset", "cub", "--root", top, "--out", out]) == 0
    return top, out, written


def test_cub_rules(cub_prepared):
    _, out, written = cub_prepared
    ds = ds_schema.validate(out)
    assert ds.meta.name == "cub" and ds.meta.classes == ATTRIBUTES and len(ATTRIBUTES) == 312
    assert official_train_keys(out) == [n for n, t in zip(IMAGES, IS_TRAIN) if t]  # images.txt order
    assert split_keys(out, "test") == [n for n, t in zip(IMAGES, IS_TRAIN) if not t]
    present = present_matrix()
    labels = labels_by_key(out)
    for i, name in enumerate(IMAGES):
        assert labels[name] == tuple(ATTRIBUTES[a] for a in np.flatnonzero(present[i]))
    assert labels[IMAGES[4]] == ()  # no attribute present: kept
    assert shard_bytes(out) == written


@pytest.mark.parametrize("how, expected", [
    ("missing_pair", "image_attribute_labels.txt: 1 (image, attribute) pairs have no line (first: image id 2, "
                     "attribute 7)"),
    ("duplicate_pair", "image_attribute_labels.txt:10: a second line for image 1, attribute 2"),
    ("bad_present", "image_attribute_labels.txt:4: is_present is 3; expected 0 or 1"),
    ("bad_attribute", "image_attribute_labels.txt:4: attribute id 313; expected 1..312"),
    ("short_line", "image_attribute_labels.txt:4: '1 4 0'; expected '<image id> <attribute id> <is_present>"),
    ("unknown_image", "image_attribute_labels.txt:4: image id 99 is not in images.txt"),
    ("bad_split", "train_test_split.txt:2: is_training_image is 2; expected one of [0, 1]"),
    ("missing_split_file", "train_test_split.txt: not found; expected CUB_200_2011/ with images.txt"),
    ("wrong_root", "images.txt not found"),
])
def test_bad_layout_names_the_file(tmp_path, capsys, how, expected):
    write_cub(tmp_path)
    base = tmp_path / "CUB_200_2011"
    labels_path = base / cub.ATTRIBUTE_LABELS
    lines = labels_path.read_text().splitlines()
    root = tmp_path
    if how == "missing_pair":
        del lines[312 + 6]
    elif how == "duplicate_pair":
        lines[9] = lines[1]
    elif how == "bad_present":
        lines[3] = "1 4 3 1 0.0"
    elif how == "bad_attribute":
        lines[3] = "1 313 0 1 0.0"
    elif how == "short_line":
        lines[3] = "1 4 0"
    elif how == "unknown_image":
        lines[3] = "99 4 0 1 0.0"
    elif how == "bad_split":
        write_lines(base / "train_test_split.txt", ["1 1", "2 2", "3 1", "4 1", "5 0"])
    elif how == "missing_split_file":
        (base / "train_test_split.txt").unlink()
    elif how == "wrong_root":
        root = base / "images"
    write_lines(labels_path, lines)
    out = tmp_path / "p"
    assert run_cli(["prepare", "--dataset", "cub", "--root", root, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_attribute_blocks_give_the_same_matrix(tmp_path):
    """Reading in blocks of 7 lines (duplicates across blocks included) equals reading in one block."""
    write_cub(tmp_path)
    path = tmp_path / "CUB_200_2011" / cub.ATTRIBUTE_LABELS
    ids = list(range(1, len(IMAGES) + 1))
    assert np.array_equal(cub.read_attribute_labels(path, ids, 312, block=7), present_matrix())
    lines = path.read_text().splitlines()
    lines.append(lines[0])
    write_lines(path, lines)
    with pytest.raises(Exception, match=f"{len(lines)}: a second line for image 1, attribute 1"):
        cub.read_attribute_labels(path, ids, 312, block=7)
