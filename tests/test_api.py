"""The public Python API (`mlpl.api`, re-exported lazily by `mlpl`): losses, pseudo-labellers, metrics, runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from mlpl import api
from mlpl.schemas.errors import InputError


def test_import_mlpl_stays_light() -> None:
    code = "import sys, mlpl; print('torch' in sys.modules, any(m.startswith('mlpl.stages') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_names_are_reexported_lazily() -> None:
    import mlpl

    assert set(api.__all__) == set(mlpl.__all__)
    assert all(getattr(mlpl, name) is getattr(api, name) for name in api.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mlpl.nothing  # noqa: B018


def test_losses_list_and_create() -> None:
    from mlpl.stages.train.losses import EpochState, create_loss_cfg, get_loss_info

    assert {"an", "epr", "gpr", "role"} <= set(api.list_losses())
    assert api.list_losses("ll-*") == ["ll-cp", "ll-ct", "ll-r"]
    loss = api.create_loss("epr", family="voc", m=2.0)
    assert loss.cfg == create_loss_cfg("epr", "voc", {"m": 2.0}) and loss.info.name == "epr"
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    observed = torch.tensor([[1, 0, 0]])
    expected = get_loss_info("epr").fn(logits=logits, observed=observed, pseudo=None, epoch=EpochState(1, 1),
                                       cfg=loss.cfg)
    assert torch.equal(loss(logits=logits, observed=observed).total, expected.total)
    with pytest.raises(InputError, match="did you mean 'an'"):
        api.create_loss("ann")


def test_pseudolabellers_list_and_create() -> None:
    from mlpl.stages.train.pseudolabels import create_pseudo_cfg

    assert "damp" in api.list_pseudolabellers()
    labeller = api.create_pseudolabeller("vlpl", family="coco", threshold=0.4)
    assert labeller.cfg == create_pseudo_cfg("vlpl", "coco", {"threshold": 0.4})
    sims = torch.tensor([[[0.9, 0.1, 0.5]]])
    out = labeller(sims=sims, observed=torch.zeros(1, 3, dtype=torch.long))
    assert out.shape == (1, 3)


def test_metrics() -> None:
    from mlpl.stages.evaluate.metrics import evaluate_scores

    scores, targets = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.4]]), np.array([[1, 0], [0, 1], [1, 1]])
    assert api.evaluate(scores, targets) == pytest.approx(dict(evaluate_scores(scores, targets)))
    assert api.mean_average_precision(scores, targets) == pytest.approx(api.evaluate(scores, targets)["map"])
    assert "generic" in api.list_families()


def test_read_run_of_a_missing_folder_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError):
        api.read_run(tmp_path / "no-run")
