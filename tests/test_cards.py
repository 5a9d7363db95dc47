"""Data cards agree with the code (registry, class lists, docs/methods.md figures) and `mlpl verify` reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlpl.schemas.errors import InputError
from mlpl.stages import digits
from mlpl.stages.prepare import cards
from mlpl.stages.prepare.datasets import DATASETS
from mlpl.stages.prepare.sources import CLASSNAMES_DIR, load_classnames
from mlpl.stages.prepare.writer import validation_split

from tests.conftest import run_cli

SHARED_CLASSNAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "classnames"

# docs/methods.md §1.1: expected positives m and the checked split sizes after the hold-out
LITERATURE = {
    "voc2012": (1.5, {"train": 4574, "val": 1143, "test": 5823}),
    "coco2014": (2.9, {"train": 65665, "val": 16416, "test": 40137}),
    "nus": (1.9, {"train": 120000, "val": 30000, "test": 60260}),
    "cub": (31.4, {"train": 4795, "val": 1199, "test": 5794}),
    "voc2007": (1.5, None),
}
ALL_CARDS = {c.name: c for c in cards.list_cards()}


def test_every_card_parses_and_every_expected_card_exists():
    assert set(ALL_CARDS) == {"voc2007", "voc2012", "coco2014", "nus", "cub", "digits"}


def test_only_user_data_has_no_card():
    assert [i.name for i in DATASETS if not i.card] == ["manifest"]  # a user's own images: no published figures


@pytest.mark.parametrize("info", [i for i in DATASETS if i.card], ids=lambda i: i.name)
def test_registered_dataset_has_a_card_that_matches_it(info):
    card = cards.read_card(cards.CARDS_DIR / info.card)
    assert card.dataset == info.name
    if info.class_list:
        assert card.class_list == info.class_list
        assert card.class_names == load_classnames(info.class_list)
    else:
        assert card.class_names == digits.CLASSES
    assert card.classes == len(card.class_names)


@pytest.mark.parametrize("name", sorted(ALL_CARDS))
def test_card_figures(name):
    card = ALL_CARDS[name]
    n = card.splits["train"] + card.splits["val"]
    train, val = validation_split(n)
    assert (len(train), len(val)) == (card.splits["train"], card.splits["val"])  # docs/methods.md §1.3 hold-out
    if name in LITERATURE:
        m, splits = LITERATURE[name]
        assert card.expected_positives == m
        if splits is not None:
            assert card.splits == splits
    assert DATASETS.get(card.dataset).card == card.path.name


def test_digits_card_matches_the_generator_defaults():
    card = ALL_CARDS["digits"]
    cfg = digits.DigitsCfg()
    assert card.splits["train"] + card.splits["val"] == cfg.size and card.splits["test"] == cfg.test_size


def test_shipped_classnames_equal_the_literature_lists():
    if not SHARED_CLASSNAMES.is_dir():
        pytest.skip("../shared/data/classnames is not present")
    for name in ("voc", "coco", "nuswide", "cub"):
        assert (CLASSNAMES_DIR / f"{name}.txt").read_bytes() == (SHARED_CLASSNAMES / f"{name}.txt").read_bytes()
    assert [len(load_classnames(f"{n}.txt")) for n in ("voc", "coco", "nuswide", "cub")] == [20, 80, 81, 312]


def test_card_parser_rejects_unknown_keys_and_missing_fields(tmp_path):
    path = tmp_path / "x.md"
    path.write_text("# x\n```card\nname: x\ndataset: x\nclasses: 2\nclass_names: a, b\ntrain: 8\nval: 2\n"
                    "test: 1\nexpected_positives: 1\ncolour: blue\n```\n")
    with pytest.raises(InputError, match="'colour: blue'"):
        cards.read_card(path)
    path.write_text("```card\nname: x\n```\n")
    with pytest.raises(InputError, match="card lacks"):
        cards.read_card(path)
    path.write_text("no block here\n")
    with pytest.raises(InputError, match="0 fenced ```card blocks"):
        cards.read_card(path)


@pytest.fixture(scope="module")
def digits_default(tmp_path_factory) -> Path:
    """A digits dataset with the default sizes (generation takes a few seconds)."""
    out = tmp_path_factory.mktemp("digits_default") / "prepared"
    assert run_cli(["prepare", "--dataset", "digits", "--out", out]) == 0
    return out


def test_verify_passes_on_default_digits(digits_default, capsys):
    report = cards.verify(digits_default)
    assert report.card == cards.CARDS_DIR / "digits.md"
    assert report.ok, [c.line() for c in report.differences]
    assert run_cli(["verify", digits_default]) == 0
    assert "ok: every check agrees" in capsys.readouterr().out


def test_verify_reports_count_differences_without_crashing(digits_small, capsys):
    assert run_cli(["verify", digits_small]) == 1
    out = capsys.readouterr().out
    assert "DIFF  train images" in out and "expected           1600   found 160" in out
    assert "DIFF  positive labels in test" in out


def test_verify_on_a_broken_dataset_is_an_input_error(tmp_path, digits_small, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits_small, broken)
    (broken / "shards" / "test-000004.tar").unlink()
    assert run_cli(["verify", broken]) == 2
    assert "test-000004.tar: shard listed in _info.json is missing" in capsys.readouterr().err


def test_verify_coco128_card_independent_checks(tmp_path, capsys):
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
    if not src.is_dir():
        pytest.skip("../shared/data/coco128 is not present")
    out = tmp_path / "coco128"
    assert run_cli(["prepare", "--dataset", "coco", "--root", src, "--out", out, "--no-test"]) == 0
    capsys.readouterr()
    assert run_cli(["verify", out]) == 0  # coco2017 has no card: the card-independent checks pass
    text = capsys.readouterr().out
    assert "card-independent checks only" in text and "ok    classes = shipped coco.txt" in text
    assert "ok    images without a positive (dropped)" in text
    assert run_cli(["verify", out, "--card", cards.CARDS_DIR / "coco2014.md"]) == 1
    text = capsys.readouterr().out
    assert "DIFF  train images" in text and "ok    class names" in text
