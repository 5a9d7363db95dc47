"""Typed configuration end to end: one type checker, Literal fields, typed command-line overrides, part configs
resolved before training and saved whole in the run's config.toml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlpl.config import Overrides, resolve_train_cfg
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.stages.train.predict import read_run_cfg
from mlpl.stages.train.resolved import RESOLVED_KEY, ResolvedParts, resolve_parts


def test_literal_fields_name_the_allowed_values() -> None:
    with pytest.raises(InputError, match=r"'pseudo_mode' must be one of \['dynamic', 'fixed', 'accumulated'\]"):
        resolve_train_cfg("aevlp", "-", "coco", "-", overrides={"pseudo_mode": "sometimes"})
    with pytest.raises(InputError, match=r"'early_stop' must be one of"):
        resolve_train_cfg("an", "-", "coco", "-", overrides={"early_stop": "soon"})
    assert resolve_train_cfg("an", "-", "coco", "-", overrides={"early_stop": "ll"}).early_stop == "ll"


def test_overrides_are_checked_when_made() -> None:
    assert dict(Overrides.of(epochs=3, lr=None).values) == {"epochs": 3}
    assert Overrides.of(lr=1).values["lr"] == 1.0 and isinstance(Overrides.of(lr=1).values["lr"], float)
    with pytest.raises(InputError, match="command line: unknown key 'epoch'"):
        Overrides.of(epoch=3)
    with pytest.raises(InputError, match="'epochs' must be int"):
        Overrides.of(epochs="3")
    with pytest.raises(InputError, match="'loss_params' must be a table"):
        Overrides.of(loss_params=3)
    cfg = resolve_train_cfg("an", "-", "coco", "-", overrides=Overrides.of(epochs=2, loss_params={"ls": 0.2}))
    assert cfg.epochs == 2 and cfg.loss_params == {"ls": 0.2}


def test_parts_are_resolved_typed_and_frozen() -> None:
    cfg = resolve_train_cfg("aevlp", "-", "coco", "-")
    parts = resolve_parts(cfg)
    assert isinstance(parts, ResolvedParts) and parts.family.name == "coco"
    assert parts.loss.m == 2.9 and parts.pseudo.zeta_global == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.loss.m = 1.0
    assert resolve_parts(cfg, expected_positives=3.3).loss.m == 3.3


def test_parts_that_do_not_fit_fail_before_training() -> None:
    cfg = resolve_train_cfg("aevlp", "-", "coco", "-", overrides={"pseudo": "none"})
    with pytest.raises(InputError, match="needs pseudo-labels"):
        resolve_parts(cfg)


def test_config_toml_holds_the_resolved_parts_and_reads_back(tmp_path: Path) -> None:
    cfg = resolve_train_cfg("gr", str(tmp_path), "voc2007", str(tmp_path))
    parts = resolve_parts(cfg)
    (tmp_path / run_schema.CONFIG_TOML).write_text(
        run_schema.dump_toml({**dataclasses.asdict(cfg), RESOLVED_KEY: parts.to_dict()}))
    import tomllib

    written = tomllib.loads((tmp_path / run_schema.CONFIG_TOML).read_text())
    assert written[RESOLVED_KEY]["family"] == {"name": "voc", "expected_positives": 1.5}
    assert written[RESOLVED_KEY]["loss"]["q1"] == parts.loss.q1
    assert read_run_cfg(tmp_path) == cfg
