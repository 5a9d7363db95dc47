"""Heads (a registry) and the classifier: backbone features → head → logits (docs/methods.md §1.5, 3.5).

A backbone (`mlpl.stages.train.backbones`) gives its last feature map [B, D, h, w] or its pooled features [B, D'];
a head maps what it reads to one logit per class. The `linear` head (`Linear(D', C)` on the pooled features: global
average pooling for CNNs) is the literature's classifier; `boostlu` (docs/methods.md §3.5) needs the map itself, to
scale the positive part of each class activation map before pooling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.families import HYPERPARAMETER_FAMILIES, FamilyInfo, build_cfg, check_family_table
from mlpl.stages.registry import Registry, register_with
from mlpl.stages.train.backbones import Backbone, create_backbone, get_data_cfg
from torch import nn

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------- heads

@dataclass(frozen=True)
class HeadInfo:
    """A registered classifier head.

    Attributes:
        name: registry name (`head` in presets, `--head`).
        description: one line.
        reference: paper and docs/methods.md section.
        build: `build(D, C, cfg) -> module` mapping what it reads (width D) to logits [B, C].
        cfg_cls: frozen dataclass of its hyperparameters (`head_params`).
        dataset_defaults: family → field values (every family listed, empty where the class defaults hold).
        outputs: names of the tensors the head gives a loss in training (`HeadOutput.aux`; see
            `LossInfo.head_outputs`).
        reads: 'map' (the backbone's last feature map [B, D, h, w]; a backbone that cannot give one is refused
            when the classifier is built) or 'pooled' (its pooled features [B, D]).
    """

    name: str
    description: str
    reference: str
    build: Callable[[int, int, Any], nn.Module]
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {name: {} for name in HYPERPARAMETER_FAMILIES})
    outputs: tuple[str, ...] = ()
    reads: Literal["map", "pooled"] = "map"

    def __post_init__(self) -> None:
        check_family_table(self.dataset_defaults, f"head {self.name!r}")


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
register_head = register_with(HEADS, HeadInfo, "build")
"""`@register_head(name=..., ...)` on a `build(D, C, cfg) -> module` function registers the head."""


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
    """`Linear(D, C)` on the backbone's pooled features (docs/methods.md §1.5: global average pooling for CNNs).
    Parameters are `weight` [C, D] and `bias`."""


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


@register_head(
    name="linear",
    description="a linear layer on the backbone's pooled features (the literature's classifier)",
    reference="docs/methods.md §1.5",
    cfg_cls=LinearHeadCfg,
    reads="pooled",
)
def linear_head(feat_dim: int, num_classes: int, cfg: LinearHeadCfg) -> nn.Module:
    return LinearHead(feat_dim, num_classes)


@register_head(
    name="boostlu",
    description="BoostLU: 1x1 convolution to class activation maps, positive values times alpha, then pooling",
    reference="Kim et al., CVPR 2023 (BoostLU); docs/methods.md §3.5",
    cfg_cls=BoostLUCfg,
    # α = 5 in every setting of the paper; digits keeps it too (no reason to tune it there).
    dataset_defaults={name: {"alpha": 5.0} for name in HYPERPARAMETER_FAMILIES},
)
def boostlu_head(feat_dim: int, num_classes: int, cfg: BoostLUCfg) -> nn.Module:
    return BoostLUHead(feat_dim, num_classes, cfg.alpha)


def get_head_info(name: str) -> HeadInfo:
    """The registered head `name`; an unknown name raises `InputError` listing the known ones."""
    return HEADS.get(name, option="--head")


def create_head_cfg(name: str, family: FamilyInfo | str | None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The frozen config of head `name`: class defaults, the family's, then `overrides` (`head_params`)."""
    info = get_head_info(name)
    return build_cfg(info.cfg_cls, f"head {name!r}", info.dataset_defaults, family, dict(overrides or {}))


# ------------------------------------------------------------------------------------------- classifier

class Classifier(nn.Module):
    """`head(features)`: the backbone's feature map [B, D, h, w] or pooled features [B, D] (what the head reads)
    → logits [B, C].

    In training the loop asks for `train_outputs=True` and gets a `HeadOutput`: heads with a regulariser or
    tensors for a loss define `forward_train(features) -> HeadOutput`; others give their logits only.
    (A keyword of `forward`, not another method, so that DistributedDataParallel sees the call.)
    """

    def __init__(self, backbone: Backbone, head: nn.Module, head_reads: str = "map") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_reads = head_reads

    def forward(self, x: torch.Tensor, train_outputs: bool = False) -> torch.Tensor | HeadOutput:
        features = self.backbone(x) if self.head_reads == "map" else self.backbone.pooled(x)
        if not train_outputs:
            return self.head(features)
        if hasattr(self.head, "forward_train"):
            return self.head.forward_train(features)
        return HeadOutput(logits=self.head(features))


def create_classifier(
    name: str, num_classes: int, *, pretrained: bool = True, weights: Path | None = None,
    head: str = "linear", head_params: Mapping[str, Any] | None = None, family: str | None = None,
    image_size: int | None = None,
) -> tuple[Classifier, str]:
    """Build the classifier; returns it and a description of the weights loaded (recorded in the run).

    Args:
        name: a `--backbone` value (`mlpl.stages.train.backbones`).
        num_classes: C.
        pretrained: load the backbone's own pretrained weights from its library's local cache.
        weights: a local backbone weights file (wins over `pretrained`).
        head: registered head (`HEADS`).
        head_params: overrides of the head's config; an unknown key or a bad value raises `InputError`.
        family: hyperparameter family for the head's per-dataset defaults (None: class defaults).
        image_size: the input side (None: the backbone's own).

    Raises:
        InputError: unknown backbone or head, bad head options, weights that do not load, or a head that reads a
            feature map the backbone cannot give.
    """
    head_info = get_head_info(head)
    head_cfg = create_head_cfg(head, family, head_params)
    size = image_size or get_data_cfg(name).image_size
    backbone, loaded = create_backbone(name, size, pretrained=pretrained, weights=weights)
    dim = backbone.prepare_for(head_info.reads, size, head)
    return Classifier(backbone, head_info.build(dim, num_classes, head_cfg), head_info.reads), loaded


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
