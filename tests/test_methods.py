"""Every registered method (a preset in `pipeline/presets/`) trains end to end on a tiny digits world.

Registering a method makes it tested here: each preset runs two short epochs with its own loss,
pseudo-labeller, head and label state, writes a valid run, and resumes from `last.pt` without error.
"""

from __future__ import annotations

import json

import pytest
from mlpl.config import list_methods, read_preset, resolve_train_cfg
from mlpl.schemas import run as run_schema
from mlpl.stages.train.labelstate import LABEL_STATES
from mlpl.stages.train.losses import LOSSES
from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS

from tests.conftest import METHOD_REGIMES, run_cli

TINY = ["--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "3"]


@pytest.mark.parametrize("method", list_methods())
def test_preset_names_registered_parts(method):
    preset = read_preset(method)
    assert preset.get("description") and preset.get("reference"), f"{method}.toml needs description and reference"
    for family in ("voc", "coco", "nus", "cub", "digits"):
        cfg = resolve_train_cfg(method, "d", family if family != "voc" else "voc2012", "o")
        assert cfg.loss in LOSSES and cfg.pseudo in PSEUDOLABELLERS and cfg.label_state in LABEL_STATES
        if LOSSES.get(cfg.loss).label_states:
            assert cfg.label_state in LOSSES.get(cfg.loss).label_states
    assert resolve_train_cfg(method, "d", "digits", "o").regime in METHOD_REGIMES


@pytest.mark.parametrize("method", list_methods())
def test_method_trains_end_to_end(method, digits_methods, methods_store, tmp_path):
    out = tmp_path / method
    args = ["train", "--dataset", digits_methods, "--method", method, "--pseudo-store", methods_store,
            "--out", out, *TINY]
    assert run_cli(args) == 0
    summary = run_schema.validate(out)
    assert summary.method == method and summary.epochs_run >= 1
    assert 0 <= summary.test.map <= 100
    # a finished run resumes as a no-op with the same result
    assert run_cli(args) == 0
    assert run_schema.read_summary(out).test.map == pytest.approx(summary.test.map)


def test_methods_command_lists_every_method(capsys):
    assert run_cli(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines if line and not line[0].isspace()}
    assert listed == set(list_methods())


def test_methods_command_json_resolves_every_family(capsys):
    assert run_cli(["methods", "aevlp", "--json"]) == 0
    (aevlp,) = json.loads(capsys.readouterr().out)
    assert (aevlp["loss"], aevlp["pseudo"]) == ("gpr", "damp")
    assert set(aevlp["families"]) == {"voc", "coco", "nus", "cub", "digits"}
    # docs/methods.md §3.7's per-dataset values, resolved through the loss's typed config
    assert aevlp["families"]["voc"]["loss_params"]["eta"] == 0.05
    assert aevlp["families"]["cub"]["loss_params"]["q1"] == 1.5
    assert aevlp["families"]["coco"]["pseudo_params"]["zeta_global"] == 0.5
    assert aevlp["families"]["voc"]["batch_size"] == 8


def test_methods_command_pattern_dataset_and_errors(capsys):
    assert run_cli(["methods", "a*", "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert "aevlp" in out and "digits:" in out and "coco:" not in out
    assert run_cli(["methods", "aevl"]) == 2
    assert "did you mean 'aevlp'" in capsys.readouterr().err
    assert run_cli(["methods", "--dataset", "imagenet"]) == 2
