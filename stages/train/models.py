"""Backbones and heads (two registries) and the classifier: backbone feature map → head → logits
(docs/methods.md §1.5, 3.5).

A backbone maps images to its last feature map [B, D, h, w]; a head maps that map to one logit per class.
The `linear` head (global average pool, then `Linear(D, C)`) is the literature's classifier; `boostlu`
(docs/methods.md §3.5) needs the map itself, to scale the positive part of each class activation map before pooling.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.registry import HYPERPARAMETER_DATASETS, Registry, build_cfg
from torch import nn

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- backbones

@dataclass(frozen=True)
class BackboneInfo:
    """A registered backbone.

    Attributes:
        name: registry name (`--backbone`).
        description: one line.
        reference: paper.
        build: `build() -> (module, D)`: a randomly initialised module mapping images [B, 3, H, W] to its last
            feature map [B, D, h, w] (no pooling: the head pools).
        weights_url: ImageNet weights, fetched into torch's hub cache by torchvision; None if there are none.
        feature_map: True if the module's output keeps a spatial map with more than one position (heads that
            attend over positions, such as `mime`, need one); False for a backbone that gives pooled features.
    """

    name: str
    description: str
    reference: str
    build: Callable[[], tuple[nn.Module, int]]
    weights_url: str | None = None
    feature_map: bool = True


BACKBONES: Registry[BackboneInfo] = Registry("backbone")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to `layer4`: its feature map [B, D, H/32, W/32], without pooling and `fc`.

    The submodules keep torchvision's names, so torchvision's ImageNet state dicts (minus `fc.*`) load as they
    are and checkpoints keep their keys.
    """

    STEM_AND_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in self.STEM_AND_STAGES:
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _torchvision_resnet(name: str) -> Callable[[], tuple[nn.Module, int]]:
    def build() -> tuple[nn.Module, int]:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        return ResNetTrunk(net), net.fc.in_features

    return build


class SmallConvNet(nn.Module):
    """A 4-block CNN for the digits world, fast on CPU: its last block's map [B, 4·width, H/8, W/8]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [3, width, width * 2, width * 4, width * 4]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers[:-1])  # no pooling after the last block
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _small_cnn() -> tuple[nn.Module, int]:
    net = SmallConvNet()
    return net, net.out_dim


for _info in (
    BackboneInfo("resnet50", "ResNet-50, ImageNet-1k V1 weights (the literature's default)", "He et al. 2016",
                 _torchvision_resnet("resnet50"), "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    BackboneInfo("resnet18", "ResNet-18, ImageNet-1k V1 weights", "He et al. 2016", _torchvision_resnet("resnet18"),
                 "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    BackboneInfo("small-cnn", "4-block CNN (64 features) for the digits world; no pretrained weights",
                 "mlpl", _small_cnn),
):
    BACKBONES.register(_info)


# -------------------------------------------------------------------------------------------------- heads

@dataclass(frozen=True)
class HeadInfo:
    """A registered classifier head.

    Attributes:
        name: registry name (`head` in presets, `--head`).
        description: one line.
        reference: paper and docs/methods.md section.
        build: `build(D, C, cfg) -> module` mapping a feature map [B, D, h, w] to logits [B, C].
        cfg_cls: frozen dataclass of its hyperparameters (`head_params`).
        dataset_defaults: family → field values (every family listed, empty where the class defaults hold).
        outputs: names of the tensors the head gives a loss in training (`HeadOutput.aux`; see
            `LossInfo.head_outputs`).
        needs_feature_map: True if the head attends over the map's positions, so that a backbone without a
            spatial map (`BackboneInfo.feature_map`) cannot feed it.
    """

    name: str
    description: str
    reference: str
    build: Callable[[int, int, Any], nn.Module]
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {name: {} for name in HYPERPARAMETER_DATASETS})
    outputs: tuple[str, ...] = ()
    needs_feature_map: bool = False


@dataclass(frozen=True)
class HeadOutput:
    """What a head gives in a training step (`Classifier(images, train_outputs=True)`).

    Attributes:
        logits: [B, C].
        regulariser: a scalar the head adds to every loss (already weighted; e.g. `mime`'s β·KL), or None.
        aux: tensors a loss reads (`HeadInfo.outputs`, `LossInfo.head_outputs`).
    """

    logits: torch.Tensor
    regulariser: torch.Tensor | None = None
    aux: Mapping[str, torch.Tensor] = field(default_factory=dict)


HEADS: Registry[HeadInfo] = Registry("head")


@dataclass(frozen=True)
class LinearHeadCfg:
    """`linear` has no hyperparameters."""


@dataclass(frozen=True, kw_only=True)
class BoostLUCfg:
    """Hyperparameters of the BoostLU head (docs/methods.md §3.5).

    Attributes:
        alpha: factor on positive class-activation values, in training and evaluation (α = 1 is the linear head).
    """

    alpha: float = 5.0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise InputError(f"alpha must be > 0, got {self.alpha}")


class LinearHead(nn.Linear):
    """Global average pool, then `Linear(D, C)` (docs/methods.md §1.5). Parameters are `weight` [C, D] and `bias`."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return super().forward(feature_map.mean(dim=(2, 3)))


class BoostLUHead(nn.Conv2d):
    """BoostLU (docs/methods.md §3.5): a 1×1 convolution gives class activation maps [B, C, h, w]; their positive values
    are multiplied by α; global average pooling gives the logits.

    With α = 1 it equals `LinearHead` with the same weights (pooling commutes with a 1×1 convolution).
    Its parameters are `weight` [C, D, 1, 1] and `bias` [C].
    """

    def __init__(self, feat_dim: int, num_classes: int, alpha: float) -> None:
        super().__init__(feat_dim, num_classes, kernel_size=1)
        self.alpha = alpha

    def class_activation_maps(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The boosted maps [B, C, h, w] whose spatial mean is the logits (what the paper's explanations show)."""
        cam = super().forward(feature_map)
        return torch.where(cam > 0, cam * self.alpha, cam)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.class_activation_maps(feature_map).mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


HEADS.register(HeadInfo(
    name="linear",
    description="global average pooling, then a linear layer (the literature's classifier)",
    reference="docs/methods.md §1.5",
    build=lambda feat_dim, num_classes, cfg: LinearHead(feat_dim, num_classes),
    cfg_cls=LinearHeadCfg,
))
HEADS.register(HeadInfo(
    name="boostlu",
    description="BoostLU: 1x1 convolution to class activation maps, positive values times alpha, then pooling",
    reference="Kim et al., CVPR 2023 (BoostLU); docs/methods.md §3.5",
    build=lambda feat_dim, num_classes, cfg: BoostLUHead(feat_dim, num_classes, cfg.alpha),
    cfg_cls=BoostLUCfg,
    # α = 5 in every setting of the paper; digits keeps it too (no reason to tune it there).
    dataset_defaults={name: {"alpha": 5.0} for name in HYPERPARAMETER_DATASETS},
))


def get_head_info(name: str) -> HeadInfo:
    """The registered head `name`; an unknown name raises `InputError` listing the known ones."""
    return HEADS.get(name, option="--head")


def create_head_cfg(name: str, family: str | None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The frozen config of head `name`: class defaults, the family's, then `overrides` (`head_params`)."""
    info = get_head_info(name)
    return build_cfg(info.cfg_cls, f"head {name!r}", info.dataset_defaults, family, dict(overrides or {}))


# ------------------------------------------------------------------------------------------- classifier

class Classifier(nn.Module):
    """`head(backbone(images))`: the backbone's feature map [B, D, h, w] → logits [B, C].

    In training the loop asks for `train_outputs=True` and gets a `HeadOutput`: heads with a regulariser or
    tensors for a loss define `forward_train(feature_map) -> HeadOutput`; others give their logits only.
    (A keyword of `forward`, not another method, so that DistributedDataParallel sees the call.)
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, train_outputs: bool = False) -> torch.Tensor | HeadOutput:
        feature_map = self.backbone(x)
        if not train_outputs:
            return self.head(feature_map)
        if hasattr(self.head, "forward_train"):
            return self.head.forward_train(feature_map)
        return HeadOutput(logits=self.head(feature_map))


def _cached_weights_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_backbone_weights(name: str, backbone: nn.Module, weights: Path | None, pretrained: bool) -> str:
    """Load ImageNet weights: `weights` (a local file) or torch's hub cache. Returns what was loaded.

    Offline with nothing cached fails before training, naming the file looked for and how to get it.
    """
    info = BACKBONES.get(name, option="--backbone")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"--backbone-weights: {path} is not a file")
    elif not pretrained:
        return "random-init"
    elif info.weights_url is None:
        raise InputError(f"--backbone {name!r} has no pretrained weights; pass --no-pretrained")
    else:
        path = _cached_weights_path(info.weights_url)
        if not path.is_file():
            raise InputError(
                f"--backbone {name}: ImageNet weights not found at {path}; download {info.weights_url} "
                f"to that path (or pass --backbone-weights FILE, or --no-pretrained to train from scratch)"
            )
    try:  # weights_only: a weights file never runs code; one that needs more than tensors is refused
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not a plain weights file that loads without running code "
                         f"({e.__class__.__name__}: {str(e).splitlines()[0][:160]}); expected a state dict of "
                         "tensors (torch.save(model.state_dict())) or a safetensors file") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet's classifier: not ours
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise InputError(f"{path}: does not fit backbone {name!r} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return str(path)


def create_classifier(
    name: str, num_classes: int, *, pretrained: bool = True, weights: Path | None = None,
    head: str = "linear", head_params: Mapping[str, Any] | None = None, family: str | None = None,
) -> tuple[Classifier, str]:
    """Build the classifier; returns it and a description of the weights loaded (recorded in the run).

    Args:
        name: registered backbone.
        num_classes: C.
        pretrained: load the backbone's ImageNet weights from torch's hub cache.
        weights: a local backbone weights file (wins over `pretrained`).
        head: registered head (`HEADS`).
        head_params: overrides of the head's config; an unknown key or a bad value raises `InputError`.
        family: hyperparameter family for the head's per-dataset defaults (None: class defaults).
    """
    head_info = get_head_info(head)
    head_cfg = create_head_cfg(head, family, head_params)
    info = BACKBONES.get(name, option="--backbone")
    if head_info.needs_feature_map and not info.feature_map:
        supported = [b.name for b in BACKBONES if b.feature_map]
        raise InputError(f"--head {head}: needs a backbone with a spatial feature map; --backbone {name!r} gives "
                         f"pooled features only. Backbones with a feature map: {supported}")
    backbone, dim = info.build()
    loaded = load_backbone_weights(name, backbone, weights, pretrained)
    return Classifier(backbone, head_info.build(dim, num_classes, head_cfg)), loaded


def param_groups(model: Classifier, lr: float, head_lr_mult: float) -> list[dict]:
    """Optimiser groups: the backbone at `lr`, the head at `lr·head_lr_mult` (docs/methods.md §1.5); a head
    with parts at other rates (SMILE's enhancement networks) gives its own groups with `param_groups(head_lr)`."""
    head_lr = lr * head_lr_mult
    head_groups = (model.head.param_groups(head_lr) if hasattr(model.head, "param_groups")
                   else [{"params": list(model.head.parameters()), "lr": head_lr}])
    return [{"params": list(model.backbone.parameters()), "lr": lr}, *head_groups]


def _register_builtin() -> None:
    # heads of one method family each live in a module of `heads`, registered when imported
    import importlib
    import pkgutil

    from mlpl.stages.train import heads

    for module in pkgutil.iter_modules(heads.__path__):
        importlib.import_module(f"{heads.__name__}.{module.name}")


_register_builtin()
