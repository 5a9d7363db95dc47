"""Backbones: the family registry, each backbone's input config, weights files (timm and open_clip models built
locally with random weights, saved and loaded back), both heads on every family, the offline errors."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.backbones import find_backbone, get_data_cfg, list_backbones
from mlpl.stages.train.backbones.timm_models import feature_map
from mlpl.stages.train.datacfg import IMAGENET_MEAN, IMAGENET_STD, DataCfg, parse_channels
from mlpl.stages.train.models import create_classifier

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
TINY_VIT = "mlpl-test-backbone-vit"
TINY_RN = "mlpl-test-backbone-rn"
TINY_CLIP_CFGS = {
    TINY_VIT: {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                               "patch_size": 8},
               "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}},
    TINY_RN: {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
              "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}},
}


@pytest.fixture(scope="module")
def tiny_clip_configs(tmp_path_factory) -> tuple[str, str]:
    """Two tiny open_clip configs (a ViT and a ModifiedResNet tower) registered instead of downloading models."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip-configs")
    for name, cfg in TINY_CLIP_CFGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return TINY_VIT, TINY_RN


def _image(size: int = 32) -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 3 * size * size).view(2, 3, size, size)


def _timm_reference(name: str, size: int | None = 32) -> torch.nn.Module:
    """A timm model with its ImageNet classifier and random weights: what a downloaded checkpoint holds."""
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": size} if size and "vit" in name else {}
    return timm.create_model(name, **kwargs).eval()


# ------------------------------------------------------------------------------------------ registry, data config

def test_every_family_resolves_its_names() -> None:
    assert find_backbone("resnet50")[0].name == "torchvision"
    assert find_backbone("small-cnn")[0].name == "mlpl"
    assert find_backbone("timm:convnext_large.fb_in22k") [1] == "convnext_large.fb_in22k"
    assert find_backbone("open_clip:ViT-L-14")[0].name == "open_clip"
    assert find_backbone("open_clip:ViT-B-16@openai")[1] == "ViT-B-16@openai"
    assert {"resnet18", "resnet50", "small-cnn"} <= set(list_backbones())
    assert "timm:convnext_large.fb_in22k" in list_backbones("timm", "convnext_large*")


@pytest.mark.parametrize(("name", "match"), [
    ("resnet5", r"unknown backbone 'resnet5'.*did you mean 'resnet50'"),
    ("timm:convnext_larg", r"timm has no model 'convnext_larg'; did you mean 'timm:convnext_large'"),
    ("timm:resnet50.no_such_tag", r"timm has no model 'resnet50.no_such_tag'"),
    ("open_clip:ViT-L-41", r"did you mean .*'open_clip:ViT-L-14'"),
    ("timm:", r"name a model after 'timm:'"),
    ("vgg:vgg16", r"unknown backbone 'vgg:vgg16'.*timm:MODEL"),
])
def test_unknown_backbones_get_did_you_mean(name: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        find_backbone(name)


def test_input_config_comes_from_each_backbones_own_pretrained_config() -> None:
    assert get_data_cfg("resnet50") == DataCfg(448, IMAGENET_MEAN, IMAGENET_STD, "bilinear")  # the literature's
    assert get_data_cfg("timm:vit_tiny_patch16_224") == DataCfg(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert get_data_cfg("timm:convnext_large.fb_in22k") == DataCfg(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert get_data_cfg("timm:resnet10t").image_size == 176  # its weights' training size
    clip = get_data_cfg("open_clip:ViT-L-14")
    assert (clip.image_size, clip.mean, clip.interpolation) == (224, OPENAI_MEAN, "bicubic")
    assert get_data_cfg("timm:vit_tiny_patch16_224", image_size=32, mean=(0.1, 0.2, 0.3)) == DataCfg(
        32, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), "bicubic")


def test_mean_std_parse_or_fail_clearly() -> None:
    assert parse_channels("0.5, 0.25 0.125", "--mean") == (0.5, 0.25, 0.125)
    for bad in ("0.5,0.5", "a,b,c", "0.1,0.2,0.3,0.4", "nan,0,0"):
        with pytest.raises(InputError, match=r"--mean .*expected three numbers"):
            parse_channels(bad, "--mean")
    with pytest.raises(InputError, match=r"--std must be three numbers > 0"):
        DataCfg(32, std=(0.5, 0.0, 0.5))


# ------------------------------------------------------------------------------------------ timm weights files

@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224"])
def test_timm_weights_file_round_trip_in_every_container(name: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = _timm_reference(name)
    state = ref.state_dict()  # with its ImageNet classifier, which is not ours
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pth")
    torch.save({"model": state}, tmp_path / "w.pt")
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(_image()), pre_logits=True)
    for file in ("w.safetensors", "w.pth", "w.pt"):
        model, loaded = create_classifier(f"timm:{name}", 3, weights=tmp_path / file, image_size=32)
        assert file in loaded and "sha256" in loaded
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model.backbone.pooled(_image()), expected)


def test_vit_weights_of_another_size_are_resampled_by_timms_own_filter(tmp_path: Path) -> None:
    torch.save(_timm_reference("vit_tiny_patch16_224", size=None).state_dict(), tmp_path / "vit224.pth")
    model, _ = create_classifier("timm:vit_tiny_patch16_224", 3, weights=tmp_path / "vit224.pth", head="boostlu",
                                 image_size=32)
    assert model.backbone.model.pos_embed.shape == (1, 1 + 2 * 2, 192)


def test_weights_with_pickled_objects_are_refused(tmp_path: Path) -> None:
    state = _timm_reference("resnet10t").state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    with pytest.raises(InputError, match=r"ckpt\.pth: not a weights file that loads without running code"):
        create_classifier("timm:resnet10t", 3, weights=tmp_path / "ckpt.pth", image_size=32)


def test_weights_of_another_architecture_name_the_first_mismatching_keys(tmp_path: Path) -> None:
    torch.save(_timm_reference("vit_tiny_patch16_224").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(InputError, match=r"vit\.pth: does not fit backbone 'timm:resnet10t': missing keys "
                                         r"\['model\.conv1\.0\.weight'.*unexpected keys \['model\.cls_token'"):
        create_classifier("timm:resnet10t", 3, weights=tmp_path / "vit.pth", image_size=32)
    torch.save(_timm_reference("resnet10t").state_dict(), tmp_path / "r10.pth")
    with pytest.raises(InputError, match=r"does not fit backbone 'resnet18'"):
        create_classifier("resnet18", 3, weights=tmp_path / "r10.pth", image_size=32)


# ------------------------------------------------------------------------------------------ heads on every family

@pytest.mark.parametrize(("name", "map_shape"), [
    ("timm:resnet10t", (2, 512, 1, 1)),
    ("timm:vit_tiny_patch16_224", (2, 192, 2, 2)),  # patch tokens on their 2×2 grid, class token dropped
    ("timm:convnext_atto", (2, 320, 1, 1)),
    ("small-cnn", (2, 64, 4, 4)),
])
def test_both_heads_on_timm_and_builtin_backbones(name: str, map_shape: tuple[int, ...]) -> None:
    for head in ("linear", "boostlu"):
        model, _ = create_classifier(name, 5, pretrained=False, head=head, image_size=32)
        assert model(_image()).shape == (2, 5)
    assert model.backbone(_image()).shape == map_shape
    assert model.head.weight.shape == (5, map_shape[1], 1, 1)


def test_parameters_the_head_cannot_reach_are_frozen() -> None:
    # ConvNeXt's head norm acts on pooled features only: the BoostLU head never sees it
    boost, _ = create_classifier("timm:convnext_atto", 3, pretrained=False, head="boostlu", image_size=32)
    frozen = {n for n, p in boost.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.model.head.norm.weight", "backbone.model.head.norm.bias"}
    linear, _ = create_classifier("timm:convnext_atto", 3, pretrained=False, head="linear", image_size=32)
    assert all(p.requires_grad for p in linear.parameters())


def test_features_that_are_no_map_are_refused_naming_the_backbones_that_have_one() -> None:
    with pytest.raises(InputError, match=r"gives features of shape \[2, 7\], not the feature map .*timm vit_\*"):
        feature_map(torch.nn.Identity(), torch.zeros(2, 7), (32, 32), "timm:x")
    with pytest.raises(InputError, match=r"shape \[2, 5, 7\]"):  # 5 tokens make no grid
        feature_map(torch.nn.Identity(), torch.zeros(2, 5, 7), (32, 32), "timm:x")


# ------------------------------------------------------------------------------------------ open_clip towers

@pytest.mark.parametrize("tower", [TINY_VIT, TINY_RN])
def test_open_clip_tower_from_a_whole_clip_checkpoint_or_the_tower_alone(tower, tiny_clip_configs, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = open_clip.create_model(tower).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    torch.save(clip.visual.state_dict(), tmp_path / "visual.pt")
    with torch.no_grad():
        expected = clip.encode_image(_image())
    for file in ("clip.safetensors", "visual.pt"):
        model, _ = create_classifier(f"open_clip:{tower}", 4, weights=tmp_path / file, image_size=32)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model.backbone.pooled(_image()), expected)
    boost, _ = create_classifier(f"open_clip:{tower}", 4, weights=tmp_path / "clip.safetensors", head="boostlu",
                                 image_size=32)
    expected_map = (2, 32, 4, 4) if tower == TINY_VIT else (2, 256, 1, 1)  # ViT patch grid / last ResNet stage
    assert boost.backbone(_image()).shape == expected_map and boost(_image()).shape == (2, 4)
    assert get_data_cfg(f"open_clip:{tower}") == DataCfg(32, OPENAI_MEAN, (0.26862954, 0.26130258, 0.27577711),
                                                         "bicubic")


# ------------------------------------------------------------------------------------------ pretrained from caches

def _fake_hub_snapshot(cache: Path, repo: str, files: dict[str, bytes | dict]) -> None:
    from safetensors.torch import save_file

    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123abcd")
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snapshot / name))
        else:
            (snapshot / name).write_bytes(content)


def test_timm_pretrained_weights_from_the_hub_cache_or_a_fast_clear_error(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    import timm  # noqa: F401  (imported before the clock starts: the budget is the failure's)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        create_classifier("timm:resnet10t", 3, pretrained=True, image_size=32)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "hf-hub timm/resnet10t.c3_in1k/model.safetensors" in message  # the files looked for
    assert "huggingface-cli download timm/resnet10t.c3_in1k model.safetensors" in message  # how to get them
    assert "--backbone-weights FILE" in message and "--no-pretrained" in message
    ref = _timm_reference("resnet10t")
    _fake_hub_snapshot(tmp_path, "timm/resnet10t.c3_in1k",
                       {"model.safetensors": {k: v.contiguous() for k, v in ref.state_dict().items()}})
    model, loaded = create_classifier("timm:resnet10t", 3, pretrained=True, image_size=32)
    assert loaded.startswith("timm resnet10t.c3_in1k (hf-hub")
    torch.testing.assert_close(model.backbone.model.conv1[0].weight, ref.conv1[0].weight)


def test_open_clip_pretrained_tag_not_cached_fails_fast_naming_the_files(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    import open_clip  # noqa: F401  (imported before the clock starts: the budget is the failure's)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"weights ViT-L-14@openai are not in the local cache; looked for "
                                         r"hf-hub timm/vit_large_patch14_clip_224\.openai/open_clip_model"):
        create_classifier("open_clip:ViT-L-14", 3, pretrained=True, image_size=32)
    assert time.perf_counter() - start < 5
