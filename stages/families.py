"""Dataset families: every per-family constant in one registry (docs/methods.md §1.1, §4.1, §4.2).

A prepared dataset belongs to one hyperparameter family, recorded in its `dataset.json` by the converter.
A family holds the constants that do not depend on a method: expected positives m, the text-noise top-k,
the default tile grid. Per-method, per-family tables (DAMP thresholds, GR λ, epochs, ...) stay in their
method's module or preset, keyed by family names checked against this registry (`check_family_table`).

`generic` is the family of a user's own data. Its constants are documented defaults: m = 2.9 (COCO's)
unless the dataset records its own measured m, which then wins (`dataset_family`; `mlpl prepare --dataset
manifest` measures it on the val split); text-noise top-k over all classes; the literature's grid g = 4.
Its per-method hyperparameters are COCO's (`hyperparameters_from`: the largest natural-image benchmark the
methods were tuned on); a preset's `[dataset.generic]` table or `--preset` overrides them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpl.schemas.dataset import DatasetMeta
from mlpl.schemas.errors import InputError
from mlpl.stages.registry import Registry, check_type


@dataclass(frozen=True)
class FamilyInfo:
    """One hyperparameter family.

    Attributes:
        name: the family's name (what `dataset.json`'s `family` and the tables' keys say).
        description: what data it covers.
        expected_positives: m, the mean number of positive labels per image (docs/methods.md §1.1).
        noise_topk: top-k of the text-noise adjacency (docs/methods.md §4.2); None: every class.
        grid: default tiles per side g of stage one's views (docs/methods.md §4.1).
        num_classes: C of the family's benchmark datasets (None: any).
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
    num_classes: int | None
    datasets: tuple[str, ...] = ()
    hyperparameters_from: str | None = None


FAMILIES: Registry[FamilyInfo] = Registry("hyperparameter family")

_BUILTIN = (
    FamilyInfo("voc", "PASCAL VOC 2007 / 2012", expected_positives=1.5, noise_topk=20, grid=4, num_classes=20,
               datasets=("voc", "voc2007", "voc2012")),
    FamilyInfo("coco", "MS-COCO 2014 / 2017", expected_positives=2.9, noise_topk=62, grid=4, num_classes=80,
               datasets=("coco", "coco2014", "coco2017")),
    FamilyInfo("nus", "NUS-WIDE", expected_positives=1.9, noise_topk=50, grid=4, num_classes=81, datasets=("nus",)),
    FamilyInfo("cub", "CUB-200-2011 attributes", expected_positives=31.4, noise_topk=312, grid=5, num_classes=312,
               datasets=("cub",)),
    # digits: canvases hold 1-4 digits uniformly (m = 2.5); the grid matches its 3×3 cell layout
    FamilyInfo("digits", "the built-in digits world", expected_positives=2.5, noise_topk=None, grid=3,
               num_classes=10, datasets=("digits",)),
    FamilyInfo("generic", "a user's own data (documented defaults; a recorded m wins)", expected_positives=2.9,
               noise_topk=None, grid=4, num_classes=None, hyperparameters_from="coco"),
)
for _info in _BUILTIN:
    FAMILIES.register(_info)

HYPERPARAMETER_FAMILIES: tuple[str, ...] = tuple(i.name for i in _BUILTIN if i.hyperparameters_from is None)
"""The families with per-method hyperparameters of their own (every per-family table lists exactly these)."""


class _ExpectedPositives:
    """Marks a per-family table value as "this family's expected positives m" (see `build_cfg`)."""

    def __repr__(self) -> str:
        return "EXPECTED_POSITIVES"


EXPECTED_POSITIVES: Any = _ExpectedPositives()
"""A per-family table value that stands for the family's m (or the dataset's recorded m), never a copy of it."""

M_FROM_FAMILY: dict[str, dict[str, Any]] = {name: {"m": EXPECTED_POSITIVES} for name in HYPERPARAMETER_FAMILIES}
"""The per-family table of a config whose only per-family field is m (docs/methods.md §1.1)."""

NO_FAMILY_VALUES: dict[str, dict[str, Any]] = {name: {} for name in HYPERPARAMETER_FAMILIES}
"""The per-family table of a config with no per-family values: every family takes the config's defaults."""


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


def dataset_family(meta: DatasetMeta, where: str = "dataset.json") -> FamilyInfo:
    """The family a prepared dataset trains with: its recorded family (else the one its name implies), with
    the dataset's own measured m, when `dataset.json` records one, in place of the family's."""
    return family_info(meta.family or family_of_dataset_name(meta.name, where), meta.expected_positives,
                       option=f"{where}: family")


def family_info(name: str, expected_positives: float | None = None, option: str | None = None) -> FamilyInfo:
    """The family `name`, with a dataset's recorded m (when not None) in place of the family's."""
    info = get_family_info(name, option=option)
    if expected_positives is not None:
        info = dataclasses.replace(info, expected_positives=float(expected_positives))
    return info


def check_family_table(table: Mapping[str, Any], what: str) -> None:
    """A per-family table's keys must be families (a typo would silently drop a family's values); a wiring bug."""
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


def build_cfg(
    cfg_cls: type,
    what: str,
    dataset_defaults: Mapping[str, Mapping[str, Any]],
    family: FamilyInfo | str | None,
    overrides: Mapping[str, Any],
) -> Any:
    """Merge class defaults, the family's table entry and overrides into a frozen `cfg_cls`, checking every key.

    Shared by every registry whose entries have a typed config (losses, pseudo-labellers, label states,
    heads). A table value `EXPECTED_POSITIVES` becomes the family's m. Values are checked against the
    field's annotation (`check_type`: int is accepted for float, a list for a tuple); `cfg_cls.__post_init__`
    checks ranges.

    Raises:
        InputError: unknown family, unknown key, wrong type, or a per-family field left unset.
    """
    values: dict[str, Any] = {}
    if family is not None:
        info = family if isinstance(family, FamilyInfo) else get_family_info(family, option=f"{what}: family")
        values.update({k: info.expected_positives if v is EXPECTED_POSITIVES else v
                       for k, v in family_entry(dataset_defaults, info).items()})
    values.update(overrides)
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{what}: unknown option(s) {unknown}. Available: {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"{what}: {missing} have no default without a dataset; pass a dataset family "
                         f"({list_families()}) or set them")
    checked = {key: check_type(value, hints[key], f"{what}: option {key!r}") for key, value in values.items()}
    try:
        return cfg_cls(**checked)
    except InputError as error:  # a range check in __post_init__: say whose option it is
        raise InputError(f"{what}: {error}") from None
