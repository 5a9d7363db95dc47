"""Classifier heads (docs/methods.md §1.5, 3.5): the registry, the linear head on backbone feature maps, BoostLU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.families import HYPERPARAMETER_FAMILIES as HYPERPARAMETER_DATASETS
from mlpl.stages.train.models import (
    HEADS,
    BoostLUHead,
    LinearHead,
    create_classifier,
    create_head_cfg,
    get_head_info,
    param_groups,
)
from torch import nn

from tests.conftest import run_cli


def test_registry_lists_both_heads() -> None:
    assert {"linear", "boostlu"} <= set(HEADS.names())
    for info in HEADS:
        assert info.description and info.reference
        assert set(info.dataset_defaults) == set(HYPERPARAMETER_DATASETS)
        for family in HYPERPARAMETER_DATASETS:
            create_head_cfg(info.name, family)
    assert create_head_cfg("boostlu", "coco").alpha == 5.0
    assert create_head_cfg("boostlu", None).alpha == 5.0


def test_unknown_head_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"--head: unknown head 'boostl'\. Available: \['boostlu', 'linear', "
                                         r"'mime', 'smile'\]"):
        create_classifier("small-cnn", 3, pretrained=False, head="boostl")
    with pytest.raises(InputError, match=r"unknown option\(s\) \['alpha'\]"):
        create_classifier("small-cnn", 3, pretrained=False, head="linear", head_params={"alpha": 5.0})
    with pytest.raises(InputError, match="alpha must be > 0"):
        create_classifier("small-cnn", 3, pretrained=False, head="boostlu", head_params={"alpha": 0.0})
    with pytest.raises(InputError, match="must be a number"):
        create_head_cfg("boostlu", "voc", {"alpha": "5"})
    with pytest.raises(InputError, match="unknown head 'cam'"):
        get_head_info("cam")


def test_linear_head_on_resnet_feature_maps_gives_torchvision_logits() -> None:
    import torchvision

    torch.manual_seed(0)
    model, _ = create_classifier("resnet18", 5, pretrained=False)
    assert isinstance(model.head, LinearHead)
    # the classifier before feature maps: torchvision's resnet (avgpool → flatten → fc) with fc = the head
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Linear(512, 5)
    state = {**model.backbone.state_dict(), "fc.weight": model.head.weight, "fc.bias": model.head.bias}
    net.load_state_dict(state)
    model.eval()
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.backbone(x).shape == (2, 512, 2, 2)
    torch.testing.assert_close(model(x), net(x))
    # checkpoints keep their keys: torchvision's names under backbone., the head's weight and bias
    assert set(model.state_dict()) == ({f"backbone.{k}" for k in net.state_dict() if not k.startswith("fc.")}
                                       | {"head.weight", "head.bias"})


def test_linear_head_on_small_cnn_pools_its_last_block() -> None:
    torch.manual_seed(0)
    model, _ = create_classifier("small-cnn", 7, pretrained=False)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    feature_map = model.backbone(x)
    assert feature_map.shape == (3, 64, 8, 8)
    pooled = model.backbone.features(x).mean(dim=(2, 3))  # the small CNN's pooled features before
    torch.testing.assert_close(model(x), pooled @ model.head.weight.T + model.head.bias)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


def boostlu_like(linear_model, alpha: float):
    model, _ = create_classifier("small-cnn", linear_model.head.out_features, pretrained=False, head="boostlu",
                                 head_params={"alpha": alpha})
    model.backbone.load_state_dict(linear_model.backbone.state_dict())
    with torch.no_grad():
        model.head.weight.copy_(linear_model.head.weight[:, :, None, None])
        model.head.bias.copy_(linear_model.head.bias)
    return model


def test_boostlu_with_alpha_1_is_the_linear_head() -> None:
    torch.manual_seed(1)
    linear, _ = create_classifier("small-cnn", 4, pretrained=False)
    boost1 = boostlu_like(linear, 1.0)
    boost5 = boostlu_like(linear, 5.0)
    assert isinstance(boost1.head, BoostLUHead) and boost1.head.weight.shape == (4, 64, 1, 1)
    x = torch.randn(2, 3, 32, 32)
    for mode in ("train", "eval"):
        # one forward per model and mode: a training-mode forward also moves the batch-norm statistics
        logits = [getattr(m, mode)()(x) for m in (linear, boost1, boost5)]
        torch.testing.assert_close(logits[1], logits[0])
        assert not torch.allclose(logits[2], logits[0])  # some class activations are positive


def test_boostlu_hand_computed_on_a_tiny_feature_map() -> None:
    head = BoostLUHead(2, 2, alpha=5.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]])[:, :, None, None])
        head.bias.copy_(torch.tensor([0.1, -0.3]))
    # feature map [1, D=2, 2, 2]: channel 0 and channel 1 at the 4 positions (row-major)
    f0 = [1.0, -2.0, 0.5, 3.0]
    f1 = [2.0, 0.0, -1.0, 1.0]
    feature_map = torch.tensor([[[f0[:2], f0[2:]], [f1[:2], f1[2:]]]])
    weights, biases = [[1.0, -1.0], [0.5, 2.0]], [0.1, -0.3]
    expected = []
    for (w0, w1), b in zip(weights, biases):
        cams = [w0 * a + w1 * c + b for a, c in zip(f0, f1)]  # class 0: −0.9, −1.9, 1.6, 2.1
        boosted = [5.0 * v if v > 0 else v for v in cams]
        expected.append(sum(boosted) / 4)
    assert expected[0] == pytest.approx((-0.9 - 1.9 + 8.0 + 10.5) / 4)
    assert head(feature_map)[0].tolist() == pytest.approx(expected, rel=1e-6)
    cams = head.class_activation_maps(feature_map)
    assert cams.shape == (1, 2, 2, 2) and cams[0, 0].flatten().tolist() == pytest.approx([-0.9, -1.9, 8.0, 10.5])


def test_head_parameters_get_the_head_learning_rate() -> None:
    model, _ = create_classifier("small-cnn", 6, pretrained=False, head="boostlu")
    backbone, head = param_groups(model, 1e-5, 10.0)
    assert head["lr"] == pytest.approx(1e-4) and backbone["lr"] == 1e-5
    assert [tuple(p.shape) for p in head["params"]] == [(6, 64, 1, 1), (6,)]
    assert model.head.alpha == 5.0


def test_load_run_model_builds_the_configured_head(digits_small, tmp_path) -> None:
    from mlpl.schemas import run as run_schema
    from mlpl.schemas.dataset import open_dataset
    from mlpl.stages.train.config import TrainCfg
    from mlpl.stages.train.predict import load_run_model
    from safetensors.torch import save_file

    classes = open_dataset(digits_small).meta.num_classes
    cfg = TrainCfg(method="boostlu", dataset=str(digits_small), out=str(tmp_path), family="digits",
                   backbone="small-cnn", pretrained=False, head="boostlu", head_params={"alpha": 3.0})
    (tmp_path / run_schema.CONFIG_TOML).write_text(run_schema.dump_toml(dataclasses.asdict(cfg)))
    trained, _ = create_classifier("small-cnn", classes, pretrained=False, head="boostlu",
                                   head_params={"alpha": 3.0})
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / run_schema.BEST_WEIGHTS))
    _, model, _ = load_run_model(tmp_path)
    assert isinstance(model.head, BoostLUHead) and model.head.alpha == 3.0
    torch.testing.assert_close(model.head.weight, trained.head.weight)


TINY = ["--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "2"]


def test_head_option_overrides_the_method_preset(digits_small, tmp_path) -> None:
    import tomllib

    from mlpl.schemas import run as run_schema

    out = tmp_path / "an-boostlu"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--head", "boostlu", "--out", out,
                    *TINY]) == 0
    assert tomllib.loads((out / run_schema.CONFIG_TOML).read_text())["head"] == "boostlu"
    out = tmp_path / "boostlu-linear"
    assert run_cli(["train", "--dataset", digits_small, "--method", "boostlu", "--head", "linear", "--out", out,
                    *TINY]) == 0
    assert tomllib.loads((out / run_schema.CONFIG_TOML).read_text())["head"] == "linear"


def test_trained_run_uses_the_configured_head(digits_small, tmp_path) -> None:
    from mlpl.schemas import run as run_schema
    from safetensors.torch import load_file

    out = tmp_path / "boostlu"
    assert run_cli(["train", "--dataset", digits_small, "--method", "boostlu", "--out", out, *TINY]) == 0
    assert load_file(str(out / run_schema.BEST_WEIGHTS))["head.weight"].dim() == 4  # the 1×1 convolution
    assert run_cli(["evaluate", out, "--split", "test"]) == 0
