"""Method presets, typed config resolution, early stopping rules (docs/methods.md §1.6), backbones."""

from __future__ import annotations

import pytest
import torch
from mlpl.config import list_methods, resolve_train_cfg
from mlpl.schemas.errors import InputError
from mlpl.stages.train.backbones import list_backbones
from mlpl.stages.train.config import should_stop
from mlpl.stages.train.models import create_classifier, param_groups


def test_methods_listed():
    assert {"aevlp", "gr", "an", "bce-full"} <= set(list_methods())


def test_resolution_order(tmp_path):
    cfg = resolve_train_cfg("aevlp", "d", "coco", "o")
    resolved = (cfg.loss, cfg.pseudo, cfg.epochs, cfg.batch_size, cfg.lr, cfg.head_lr_mult)
    assert resolved == ("gpr", "damp", 8, 16, 1e-5, 10.0)
    assert resolve_train_cfg("aevlp", "d", "voc2012", "o").batch_size == 8
    digits = resolve_train_cfg("aevlp", "d", "digits", "o")
    assert digits.backbone == "small-cnn" and digits.image_size == 64
    user = tmp_path / "p.toml"
    user.write_text("epochs = 3\n[loss_params]\neta = 0.5\n")
    cfg = resolve_train_cfg("aevlp", "d", "coco", "o", user, {"epochs": 5, "batch_size": None})
    assert cfg.epochs == 5 and cfg.batch_size == 16 and cfg.loss_params == {"eta": 0.5}


@pytest.mark.parametrize("text, message", [("epoch = 3\n", "unknown key 'epoch'"), ("epochs = 'x'\n", "must be int")])
def test_bad_preset_named(tmp_path, text, message):
    user = tmp_path / "p.toml"
    user.write_text(text)
    with pytest.raises(InputError, match=message):
        resolve_train_cfg("an", "d", "coco", "o", user)


def test_unknown_method():
    with pytest.raises(InputError, match="did you mean 'aevlp'"):
        resolve_train_cfg("aevpl", "d", "coco", "o")


@pytest.mark.parametrize(
    "rule, history, stop",
    [
        ("gr", [50, 51, 52], False),
        ("gr", [50, 52, 51.9, 51.8], True),  # two epochs without improvement
        ("gr", [50, 52, 49.9], True),  # more than 2 points below the best
        ("gr", [50, 52, 50.5], False),
        ("em", [50, 51], False),
        ("em", [50, 49.9], True),  # the first epoch that does not improve
        ("ll", [50, 52, 49.5, 49.1], False),
        ("ll", [50, 53, 49.9], True),
        ("none", [50, 10, 5, 1], False),
    ],
)
def test_early_stopping(rule, history, stop):
    assert should_stop(rule, history) is stop


def test_backbone_registry_and_groups():
    assert {"resnet50", "resnet18", "small-cnn"} <= set(list_backbones())
    model, loaded = create_classifier("small-cnn", 7, pretrained=False)
    assert loaded == "random-init"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    groups = param_groups(model, 1e-5, 10.0)
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]


def test_backbone_weights_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match=r"resnet18-f37072fd\.pth.*--backbone-weights"):
        create_classifier("resnet18", 5, pretrained=True, image_size=64)


def test_backbone_weights_from_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model, loaded = create_classifier("resnet18", 5, weights=tmp_path / "r18.pth", image_size=64)
    assert "r18.pth" in loaded
    torch.testing.assert_close(model.backbone.conv1.weight, net.conv1.weight)
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="does not fit"):
        create_classifier("resnet18", 5, weights=tmp_path / "bad.pth", image_size=64)
