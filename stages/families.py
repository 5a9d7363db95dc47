"""Dataset families: every per-family constant in one registry (docs/methods.md §1.1, §4.1, §4.2).

A prepared dataset belongs to one hyperparameter family, recorded in its `dataset.json` by the converter.
A family holds the constants that do not depend on a method: expected positives m, the text-noise top-k,
the default tile grid. Per-method, per-family tables (DAMP thresholds, GR λ, epochs, ...) stay in their
method's module or preset, keyed by family names checked against this registry (`check_family_table`).

`generic` is the family of a user's own data. Its constants are documented defaults: m = 2.9 (COCO's,
the natural-image benchmark whose label density is typical) unless the dataset records its own measured
m, which then wins (`family_for_dataset`); top-k over all classes; the literature's grid g = 4. Its
per-method hyperparameters are COCO's (`hyperparameters_from`), as the methods' papers tune nothing else
for natural images at scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpl.schemas.errors import InputError
from mlpl.stages.registry import Registry


@dataclass(frozen=True)
class FamilyInfo:
    """One hyperparameter family.

    Attributes:
        name: the family's name (what `dataset.json`'s `family` and the tables' keys say).
        description: what data it covers.
        expected_positives: m, the mean number of positive labels per image (docs/methods.md §1.1).
        noise_topk: top-k of the text-noise adjacency (docs/methods.md §4.2); None: every class.
        grid: default tiles per side g of stage one's views (docs/methods.md §4.1).
        datasets: prepared dataset names of this family, for `dataset.json` files written before the
            family was recorded.
        hyperparameters_from: the family whose per-method tables this one uses when a table has no
            entry of its own (None: its own entries or the class defaults).
    """

    name: str
    description: str
    expected_positives: float
    noise_topk: int | None
    grid: int
    datasets: tuple[str, ...] = ()
    hyperparameters_from: str | None = None


FAMILIES: Registry[FamilyInfo] = Registry("dataset family")

for _info in (
    FamilyInfo("voc", "PASCAL VOC 2007 / 2012, 20 classes", expected_positives=1.5, noise_topk=20, grid=4,
               datasets=("voc", "voc2007", "voc2012")),
    FamilyInfo("coco", "MS-COCO 2014 / 2017, 80 classes", expected_positives=2.9, noise_topk=62, grid=4,
               datasets=("coco", "coco2014", "coco2017")),
    FamilyInfo("nus", "NUS-WIDE, 81 classes", expected_positives=1.9, noise_topk=50, grid=4, datasets=("nus",)),
    FamilyInfo("cub", "CUB-200-2011 attributes, 312 classes", expected_positives=31.4, noise_topk=312, grid=5,
               datasets=("cub",)),
    # digits: canvases hold 1-4 digits uniformly (m = 2.5); the grid matches its 3×3 cell layout
    FamilyInfo("digits", "the built-in digits world, 10 classes", expected_positives=2.5, noise_topk=None, grid=3,
               datasets=("digits",)),
    FamilyInfo("generic", "a user's own data (documented defaults; a recorded m wins)", expected_positives=2.9,
               noise_topk=None, grid=4, hyperparameters_from="coco"),
):
    FAMILIES.register(_info)


def get_family_info(name: str, option: str | None = None) -> FamilyInfo:
    """The family `name`; an unknown one raises `InputError` listing the families (and a close match)."""
    return FAMILIES.get(name, option=option)


def list_families() -> list[str]:
    """Every family's name, sorted."""
    return FAMILIES.names()


def family_of_dataset_name(name: str, where: str) -> str:
    """The family of a prepared dataset name, for a `dataset.json` that does not record its family.

    Raises:
        InputError: the name belongs to no family (naming `where`, the name and the families).
    """
    for info in FAMILIES:
        if name in info.datasets:
            return info.name
    raise InputError(f"{where}: dataset {name!r} records no family and is not a known dataset; add "
                     f"\"family\" to its dataset.json, one of {list_families()}")


def family_for_dataset(name: str, family: str | None, expected_positives: float | None,
                       where: str = "dataset.json") -> FamilyInfo:
    """The family a prepared dataset trains with: its recorded family (else the one its name implies), with
    the dataset's own measured m, when it records one, in place of the family's."""
    info = get_family_info(family if family is not None else family_of_dataset_name(name, where),
                           option=f"{where}: family")
    if expected_positives is not None:
        info = dataclasses.replace(info, expected_positives=float(expected_positives))
    return info


def check_family_table(table: Mapping[str, Any], what: str) -> None:
    """A per-family table's keys must be families (a typo would silently drop a family's values)."""
    unknown = sorted(set(table) - set(list_families()))
    if unknown:
        raise ValueError(f"{what}: per-family table keys {unknown} are not families {list_families()}")


def family_entry(table: Mapping[str, Mapping[str, Any]], family: FamilyInfo) -> Mapping[str, Any]:
    """A per-family table's entry for `family`: its own, else that of `hyperparameters_from`, else empty."""
    if family.name in table:
        return table[family.name]
    if family.hyperparameters_from is not None:
        return table.get(family.hyperparameters_from, {})
    return {}
