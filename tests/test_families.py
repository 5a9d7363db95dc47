"""The family registry: every per-family constant, older dataset.json files, a dataset's recorded m, top-k and grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlpl.config import resolve_train_cfg
from mlpl.schemas.dataset import DatasetMeta, open_dataset
from mlpl.schemas.errors import InputError
from mlpl.stages.families import (
    EXPECTED_POSITIVES,
    FAMILIES,
    HYPERPARAMETER_FAMILIES,
    build_cfg,
    check_family_table,
    dataset_family,
    family_info,
    get_family_info,
    list_families,
)
from mlpl.stages.precompute.run import PrecomputeCfg, resolve_noise_cfg, resolve_view_cfg
from mlpl.stages.precompute.teacher import TeacherCfg
from mlpl.stages.train.losses import create_loss_cfg

# docs/methods.md §1.1 (m), §4.2 (noise top-k), §4.1 (grid g)
EXPECTED = {
    "voc": (1.5, 20, 4), "coco": (2.9, 62, 4), "nus": (1.9, 50, 4), "cub": (31.4, 312, 5), "digits": (2.5, None, 3),
    "generic": (2.9, None, 4),
}


def meta(name: str, family: str = "", m: float | None = None, classes: int = 80) -> DatasetMeta:
    return DatasetMeta(name=name, classes=tuple(f"c{i}" for i in range(classes)), splits={"train": 4},
                       fingerprint="-", image_ext="jpg", rows_per_shard=4, family=family, expected_positives=m)


def stage_one(**kw) -> PrecomputeCfg:
    return PrecomputeCfg(dataset=Path("-"), out=Path("-"), seeds=(0,), teacher=TeacherCfg(), **kw)


def test_every_family_and_its_constants() -> None:
    assert list_families() == sorted(EXPECTED)
    for name, (m, topk, grid) in EXPECTED.items():
        info = get_family_info(name)
        assert (info.expected_positives, info.noise_topk, info.grid) == (m, topk, grid)
    assert HYPERPARAMETER_FAMILIES == ("voc", "coco", "nus", "cub", "digits")
    assert get_family_info("generic").hyperparameters_from == "coco"


def test_unknown_family_is_an_error_listing_them() -> None:
    with pytest.raises(InputError, match=r"unknown hyperparameter family 'cocoa'.*did you mean 'coco'"):
        get_family_info("cocoa")
    with pytest.raises(ValueError, match="'imagenet'"):
        check_family_table({"voc": {}, "imagenet": {}}, "loss 'x'")


@pytest.mark.parametrize(("name", "family"), [("voc2007", "voc"), ("voc2012", "voc"), ("coco2014", "coco"),
                                              ("coco2017", "coco"), ("nus", "nus"), ("cub", "cub"),
                                              ("digits", "digits")])
def test_older_dataset_json_without_family_maps_known_names(name: str, family: str) -> None:
    assert dataset_family(meta(name)).name == family


def test_unknown_name_without_family_is_an_error_naming_it() -> None:
    with pytest.raises(InputError, match=r"'my-photos' records no family.*'generic'"):
        dataset_family(meta("my-photos"))
    with pytest.raises(InputError, match=r"records no family"):
        resolve_train_cfg("an", "-", "my-photos", "-")


def test_recorded_family_wins_over_the_name() -> None:
    assert dataset_family(meta("coco2014", family="generic")).name == "generic"


def test_a_datasets_recorded_m_overrides_the_familys() -> None:
    info = dataset_family(meta("mine", family="generic", m=3.7))
    assert info.expected_positives == 3.7 and get_family_info("generic").expected_positives == 2.9
    assert create_loss_cfg("epr", info, {}).m == 3.7
    assert create_loss_cfg("epr", "generic", {}).m == 2.9
    assert create_loss_cfg("epr", family_info("voc", 1.7), {}).m == 1.7


def test_generic_takes_cocos_method_hyperparameters_and_its_own_m() -> None:
    coco, generic = create_loss_cfg("gpr", "coco", {}), create_loss_cfg("gpr", family_info("generic", 4.0), {})
    assert dataclasses.replace(coco, m=4.0) == generic


def test_expected_positives_marker_in_a_table() -> None:
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        m: float
        k: int = 1

    table = {"voc": {"m": EXPECTED_POSITIVES, "k": 2}}
    assert build_cfg(Cfg, "x", table, "voc", {}) == Cfg(m=1.5, k=2)
    assert build_cfg(Cfg, "x", table, family_info("voc", 2.0), {"k": 3}) == Cfg(m=2.0, k=3)
    with pytest.raises(InputError, match=r"\['m'\] have no default"):
        build_cfg(Cfg, "x", table, "cub", {})


@pytest.mark.parametrize(("family", "topk"), [("coco", 62), ("voc", 20), ("nus", 50), ("cub", 312),
                                              ("digits", 80), ("generic", 80)])
def test_text_noise_topk_is_the_familys(family: str, topk: int) -> None:
    ds = SimpleNamespace(meta=meta("data", family=family))
    assert resolve_noise_cfg(stage_one(noise=True), ds).topk == topk
    assert resolve_noise_cfg(stage_one(noise=True, noise_topk=7), ds).topk == 7


def test_text_noise_on_a_coco_store_uses_62_from_the_name_too() -> None:
    """A COCO dataset.json written before families were recorded: looked up by family, not by dataset name."""
    assert resolve_noise_cfg(stage_one(noise=True), SimpleNamespace(meta=meta("coco2014"))).topk == 62


@pytest.mark.parametrize(("family", "source", "grid"), [("cub", {}, 5), ("coco", {}, 4), ("generic", {}, 4),
                                                        ("digits", {"cells": 3}, 3), ("coco", {"cells": 2}, 2)])
def test_default_grid(family: str, source: dict, grid: int) -> None:
    ds = SimpleNamespace(meta=dataclasses.replace(meta("data", family=family), source=source))
    teacher = SimpleNamespace(image_size=32, interpolation="bilinear", mean=(), std=())
    assert resolve_view_cfg(stage_one(), ds, teacher).grid == grid
    assert resolve_view_cfg(stage_one(grid=6), ds, teacher).grid == 6


def test_preset_family_tables_must_name_families(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text("[dataset.imagenet]\nepochs = 3\n")
    with pytest.raises(InputError, match=r"\[dataset.imagenet\] is not a hyperparameter family"):
        resolve_train_cfg("an", "-", "coco", "-", preset)


def test_converters_record_the_family(digits_small: Path) -> None:
    ds = open_dataset(digits_small)
    assert ds.meta.family == "digits" and dataset_family(ds.meta) == FAMILIES.get("digits")


def test_a_training_config_needs_a_known_family() -> None:
    from mlpl.stages.train.config import TrainCfg

    with pytest.raises(TypeError):  # no silent default
        TrainCfg(method="an", dataset="d", out="o")  # type: ignore[call-arg]
    with pytest.raises(InputError, match="family.*'cocoa'.*did you mean 'coco'"):
        TrainCfg(method="an", dataset="d", out="o", family="cocoa")


def test_methods_shows_the_generic_family_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    from mlpl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["methods", "aevlp", "--dataset", "generic"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "generic: " in out and "m=2.9" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["methods", "aevlp", "--dataset", "cocoa"])
    assert exit_info.value.code == 2
    assert "--dataset" in capsys.readouterr().err
