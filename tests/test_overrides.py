"""`--set`/`--grid` parsing, `--seeds` ranges, the sweep's plan and run names, loggers' availability checks."""

from __future__ import annotations

import pytest
from mlpl.overrides import nest, parse_grids, parse_sets, parse_value
from mlpl.schemas.errors import InputError
from mlpl.sweep import parse_seeds, plan


def test_parse_seeds():
    assert parse_seeds("0-2") == (0, 1, 2)
    assert parse_seeds("0,3,5") == (0, 3, 5)
    assert parse_seeds("0-1,7,1") == (0, 1, 7)
    for bad in ("2-0", "a", "0-", ""):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)


def test_values_are_toml_else_strings():
    assert parse_value("0.3") == 0.3 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("accumulated") == "accumulated"


def test_sets_nest_into_tables():
    sets = parse_sets(["pseudo_params.tau=0.5", "lr=1e-4", "pseudo_params.delta_neg=0.2"])
    assert nest(sets) == {"pseudo_params": {"tau": 0.5, "delta_neg": 0.2}, "lr": 1e-4}


@pytest.mark.parametrize("item, message", [
    ("lrr=0.1", "--set: unknown key 'lrr'. Known keys:"),
    ("pseudo_parms.tau=1", "--set: unknown key 'pseudo_parms.tau'"),
    ("lr", "--set 'lr': expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
])
def test_bad_set(item, message):
    with pytest.raises(InputError) as error:
        parse_sets([item])
    assert message in str(error.value)


def test_unknown_key_suggests():
    with pytest.raises(InputError, match="did you mean 'epochs'"):
        parse_sets(["epoch=3"])


def test_grids_and_plan_names():
    grids = parse_grids(["pseudo_params.delta_neg=0.1,0.5", "pseudo_mode=dynamic,fixed"])
    assert grids == [("pseudo_params.delta_neg", [0.1, 0.5]), ("pseudo_mode", ["dynamic", "fixed"])]
    points = plan(["aevlp"], (0, 1), [], grids)
    assert len(points) == 8
    assert points[0].name == "aevlp-delta_neg=0.1-pseudo_mode=dynamic-seed0"
    assert points[-1].name == "aevlp-delta_neg=0.5-pseudo_mode=fixed-seed1"
    assert len({p.name for p in points}) == 8
    with_regimes = plan(["an", "gr"], (0,), ["spml", "partial-0.5"], [])
    assert [p.name for p in with_regimes] == ["an-spml-seed0", "an-partial-0.5-seed0", "gr-spml-seed0",
                                              "gr-partial-0.5-seed0"]


def test_same_key_name_in_two_sections_keeps_the_section():
    points = plan(["x"], (0,), [], parse_grids(["loss_params.beta=1,2", "label_state_params.beta=3"]))
    assert points[0].name == "x-loss_params.beta=1-label_state_params.beta=3-seed0"


def test_bad_grids():
    with pytest.raises(InputError, match="given twice"):
        parse_grids(["lr=1,2", "lr=3"])
    with pytest.raises(InputError, match="repeated"):
        parse_grids(["lr=1,1"])
    with pytest.raises(InputError, match="--grid: unknown key 'deltaneg'"):
        parse_grids(["deltaneg=0.1,0.2"])


def test_logger_checks(monkeypatch):
    import importlib.util

    from mlpl.stages.train.loggers import check_loggers

    check_loggers(["csv", "tensorboard"])
    with pytest.raises(InputError, match="--logger: unknown logger 'tensorbord'.*did you mean 'tensorboard'"):
        check_loggers(["tensorbord"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(InputError, match=r"--logger wandb: the 'wandb' package is not installed; pip install"):
        check_loggers(["wandb"])
