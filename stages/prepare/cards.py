"""Data cards (`data_cards/<name>.md`): their machine-readable block, and `verify` of a prepared dataset.

A card is prose for people plus one fenced block tagged `card` of `key: value` lines (`#` starts a
comment) that this module reads; an unknown key fails. `verify` runs the checks that need no card
(the contract, class list, the 80/20 hold-out, the empty-label rule, keys, shard members) and, when
the dataset has a card, compares classes, split sizes and positives with it; every difference is
reported as a line, none raises.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlpl.schemas.dataset import SHARDS_DIR, PreparedDataset, row_key, validate
from mlpl.schemas.errors import InputError
from mlpl.stages.families import family_of_dataset_name, get_family_info
from mlpl.stages.prepare.sources import load_classnames
from mlpl.stages.prepare.writer import VAL_FRACTION

CARDS_DIR = Path(__file__).resolve().parents[2] / "data_cards"
SPLIT_NAMES = ("train", "val", "test")

_BLOCK = re.compile(r"^```card[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class DataCard:
    """The machine-readable fields of a data card."""

    path: Path
    name: str  # the prepared dataset's name (dataset.json) the card describes
    dataset: str  # the `mlpl prepare --dataset` name that builds it
    classes: int
    class_names: tuple[str, ...]
    class_list: str  # shipped class-list file ("" when the names are given inline)
    splits: dict[str, int]  # train / val / test after the hold-out
    expected_positives: float  # m: mean positives per image over train ∪ val (default: the family's m)
    positives_tolerance: float
    positives: dict[str, int] = field(default_factory=dict)  # optional exact positive labels per split


_KEYS = {
    "name", "dataset", "classes", "class_list", "class_names", "train", "val", "test",
    "expected_positives", "positives_tolerance", "positives_train", "positives_val", "positives_test",
}
_REQUIRED = ("name", "dataset", "classes", "train", "val", "test")


def parse_card_fields(text: str, path: Path) -> dict[str, str]:
    blocks = _BLOCK.findall(text)
    if len(blocks) != 1:
        raise InputError(f"{path}: {len(blocks)} fenced ```card blocks; expected exactly one")
    fields: dict[str, str] = {}
    for lineno, line in enumerate(blocks[0].splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise InputError(f"{path}: card line {lineno} {line!r}; expected 'key: value' with key in {sorted(_KEYS)}")
        if key in fields:
            raise InputError(f"{path}: card key {key!r} given twice")
        fields[key] = value.strip()
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InputError(f"{path}: card lacks {missing}; expected the keys {list(_REQUIRED)}")
    if ("class_list" in fields) == ("class_names" in fields):
        raise InputError(f"{path}: card needs exactly one of class_list (a shipped file) or class_names (inline)")
    return fields


def read_card(path: Path) -> DataCard:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data card")
    fields = parse_card_fields(path.read_text(encoding="utf-8"), path)

    def number(key: str, kind: type = int) -> int | float:
        try:
            return kind(fields[key].replace(",", "").replace("_", ""))
        except ValueError:
            raise InputError(f"{path}: card key {key!r} is {fields[key]!r}; expected a {kind.__name__}") from None

    if "class_list" in fields:
        names = load_classnames(fields["class_list"])
    else:
        names = tuple(n.strip() for n in fields["class_names"].split(",") if n.strip())
    return DataCard(
        path=path,
        name=fields["name"],
        dataset=fields["dataset"],
        classes=int(number("classes")),
        class_names=names,
        class_list=fields.get("class_list", ""),
        splits={s: int(number(s)) for s in SPLIT_NAMES},
        # m: the card's own measured value when it gives one (the digits world's exact mean), else its family's
        expected_positives=float(number("expected_positives", float)) if "expected_positives" in fields else
        get_family_info(family_of_dataset_name(fields["name"], str(path))).expected_positives,
        positives_tolerance=float(number("positives_tolerance", float)) if "positives_tolerance" in fields else 0.05,
        positives={s: int(number(f"positives_{s}")) for s in SPLIT_NAMES if f"positives_{s}" in fields},
    )


def list_cards(cards_dir: Path = CARDS_DIR) -> list[DataCard]:
    return [read_card(p) for p in sorted(Path(cards_dir).glob("*.md"))]


@dataclass(frozen=True)
class Check:
    """One line of a verify report."""

    what: str
    expected: str
    found: str
    ok: bool

    def line(self) -> str:
        mark = "ok  " if self.ok else "DIFF"
        return f"{mark}  {self.what:40s} expected {self.expected:>14s}   found {self.found}"


@dataclass
class VerifyReport:
    dataset: Path
    card: Path | None
    checks: list[Check] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # figures reported without a check

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def differences(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, what: str, expected: object, found: object, ok: bool | None = None) -> None:
        self.checks.append(Check(what, str(expected), str(found), expected == found if ok is None else ok))


def _positives(ds: PreparedDataset) -> dict[str, int]:
    """Positive labels per split, over the rows whose full labels are known."""
    counts = np.array([len(x) for x in ds.labels.labels], dtype=np.int64)
    known = ds.labels.known_of()
    return {s: int(counts[(ds.labels.split == s) & known].sum()) for s in SPLIT_NAMES}


def _check_shard_members(ds: PreparedDataset) -> str | None:
    """The first shard whose members are not `<row>.<ext>` + `<row>.row` for its rows, in order; None if all are."""
    for s in ds.shards:
        path = ds.root / SHARDS_DIR / s.name
        with tarfile.open(path) as tar:
            names = tar.getnames()
        expected_rows = [row_key(r) for r in range(s.first_row, s.first_row + s.num_samples)]
        if len(names) != 2 * s.num_samples or [n.split(".", 1)[0] for n in names[::2]] != expected_rows or \
                any(n != f"{k}.row" for n, k in zip(names[1::2], expected_rows)):
            return s.name
    return None


def card_independent_checks(ds: PreparedDataset, report: VerifyReport) -> None:
    meta, lab = ds.meta, ds.labels
    class_list = meta.source.get("class_list")
    if class_list:
        shipped = load_classnames(class_list)
        report.add(f"classes = shipped {class_list}", f"{len(shipped)} names",
                   f"{meta.num_classes} names" + ("" if meta.classes == shipped else ", different"),
                   meta.classes == shipped)
    n_official = meta.splits.get("train", 0) + meta.splits.get("val", 0)
    if meta.source.get("val_heldout", True):  # a manifest may name its own val split
        report.add("val = round(0.2·(train+val))", int(round(VAL_FRACTION * n_official)), meta.splits.get("val", 0))
    empty = int(sum(len(x) == 0 for x in lab.labels))
    if meta.source.get("empty_labels") == "dropped":
        report.add("images without a positive (dropped)", 0, empty)
    for split in SPLIT_NAMES:
        keys = [k for k, s in zip(lab.key, lab.split) if s == split]
        report.add(f"distinct keys in {split}", len(keys), len(set(keys)))
    bad = _check_shard_members(ds)
    report.add("shard members = rows in order", "all shards", bad or "all shards")


def card_checks(ds: PreparedDataset, card: DataCard, report: VerifyReport) -> None:
    meta = ds.meta
    report.add("name", card.name, meta.name)
    report.add("classes", card.classes, meta.num_classes)
    same = meta.classes == card.class_names
    report.add("class names", card.class_list or "inline list", (card.class_list or "inline list") if same else
               "different names or order", same)
    for split in SPLIT_NAMES:
        report.add(f"{split} images", card.splits[split], meta.splits.get(split, 0))
    found = _positives(ds)
    n_official = meta.splits.get("train", 0) + meta.splits.get("val", 0)
    m = (found["train"] + found["val"]) / n_official if n_official else 0.0
    report.add(f"positives/image, train+val (±{card.positives_tolerance:g})", f"{card.expected_positives:g}",
               f"{m:.4f}", abs(m - card.expected_positives) <= card.positives_tolerance)
    for split, expected in card.positives.items():
        report.add(f"positive labels in {split}", expected, found[split])


def find_card(name: str, cards_dir: Path = CARDS_DIR) -> Path | None:
    path = Path(cards_dir) / f"{name}.md"
    return path if path.is_file() else None


def verify(dataset: Path, card: Path | None = None) -> VerifyReport:
    """Check a prepared dataset (contract, then card-independent checks, then its card if it has one).

    A broken contract raises `InputError`; every other difference is a failed `Check` in the report.
    `card` picks a card file; by default the one named after the dataset (`data_cards/<name>.md`).
    """
    ds = validate(dataset)
    card_path = Path(card) if card is not None else find_card(ds.meta.name)
    report = VerifyReport(Path(dataset), card_path)
    positives = _positives(ds)
    for split in SPLIT_NAMES:
        start, stop = ds.meta.split_range(split)
        n, unknown = stop - start, ds.labels.describe_unknown(np.arange(start, stop))
        known = int(ds.labels.known_of(np.arange(start, stop)).sum())
        mean = f" ({positives[split] / known:.3f} per image)" if known else ""
        report.facts.append(f"{split}: {n} images, " + (f"{unknown}; " if unknown else "")
                            + f"{positives[split]} positive labels{mean}" + (" where known" if unknown else ""))
    card_independent_checks(ds, report)
    if card_path is not None:
        card_checks(ds, read_card(card_path), report)
    return report
