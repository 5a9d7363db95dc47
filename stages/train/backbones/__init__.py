"""Backbones: one registry of families (torchvision ResNets, the digits CNN, any timm model, open_clip image towers),
one module per family; each builds a `Backbone`, knows its input config (`DataCfg`) and where its weights live.

`--backbone` names a model of a fixed-name family (`resnet50`, `resnet18`, `small-cnn`) or `FAMILY:MODEL` of a
prefixed one (`timm:convnext_large.fb_in22k`, `open_clip:ViT-L-14`). Weights come from `--backbone-weights FILE`,
from the library's own pretrained weights when its local cache has them, or nowhere (`--no-pretrained`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.hub import sha256_file
from mlpl.stages.registry import Registry
from mlpl.stages.train.backbones.weights import load_checked, read_state_dict
from mlpl.stages.train.datacfg import DataCfg
from torch import nn

log = logging.getLogger(__name__)

HEAD_INPUTS = ("map", "pooled")
MAP_BACKBONES = ("CNNs with NCHW or NHWC maps (torchvision resnets, small-cnn, timm resnet*, convnext*, efficientnet*, "
                 "regnet*, swin*)", "ViTs whose patch tokens form a grid (timm vit_*, deit*, eva*; open_clip ViT "
                 "towers)", "open_clip ModifiedResNet towers")


def unsupported_map(name: str, shape: tuple[int, ...]) -> InputError:
    return InputError(
        f"backbone {name!r} gives features of shape {list(shape)}, not the feature map [B, D, h, w] this head reads; "
        f"backbones with maps: {'; '.join(MAP_BACKBONES)}. Or use --head linear (pooled features)")


class Backbone(nn.Module):
    """Images [B, 3, S, S] → the last feature map [B, D, h, w] (`forward`) or pooled features [B, D'] (`pooled`).

    The map is what the BoostLU head scales; the pooled features are what the backbone's own classifier read
    (global average pooling for CNNs, the class token or the projected embedding for ViTs and CLIP towers).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).mean(dim=(2, 3))

    def prepare_for(self, head_input: str, image_size: int, head: str = "") -> int:
        """The width of what a head reading `head_input` ('map' or 'pooled') receives, from one forward of a blank
        image; parameters that output does not depend on are frozen (so DistributedDataParallel never waits for
        their gradients and Adam leaves them alone).

        Raises:
            InputError: the backbone cannot give that output at this image size (the message says which can).
        """
        was_training = self.training
        self.eval()  # batch statistics of a single blank image are meaningless; eval mode reads no RNG either
        try:
            x = torch.zeros(1, 3, image_size, image_size)
            out = self(x) if head_input == "map" else self.pooled(x)
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
        except InputError as e:
            raise InputError(f"--head {head}: {e}" if head else str(e)) from None
        finally:
            self.train(was_training)
        unused = [p for p, g in zip(params, grads) if g is None]
        for param in unused:
            param.requires_grad_(False)
        if unused:
            log.info("%d backbone tensors do not feed the %s features; frozen", len(unused), head_input)
        return int(out.shape[1])


@dataclass(frozen=True)
class BackboneFamilyInfo:
    """A registered backbone family.

    Attributes:
        name: the family; prefixed families are addressed as `NAME:MODEL`.
        description: one line.
        reference: where its models and weights come from.
        prefixed: models are named `NAME:MODEL` (False: the names in `list_models()` stand alone).
        list_models: every model name the family knows (for listings and "did you mean").
        is_model: whether a model name exists (cheap).
        data_cfg: `data_cfg(model)`: its input config from its own pretrained configuration, without building it.
        build: `build(model, image_size)`: a randomly initialised `Backbone`.
        pretrained_file: `pretrained_file(model)`: the cached file of its own pretrained weights and what to record;
            raises `InputError` naming the files looked for and how to get them.
        adapt_state: `adapt_state(backbone, state)`: a checkpoint's names → the backbone's (drop classifiers,
            convert formats, resample position embeddings).
    """

    name: str
    description: str
    reference: str
    prefixed: bool
    list_models: Callable[[], list[str]]
    is_model: Callable[[str], bool]
    data_cfg: Callable[[str], DataCfg]
    build: Callable[[str, int], Backbone]
    pretrained_file: Callable[[str], tuple[Path, str]]
    adapt_state: Callable[[Backbone, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


BACKBONE_FAMILIES: Registry[BackboneFamilyInfo] = Registry("backbone family")


def find_backbone(name: str) -> tuple[BackboneFamilyInfo, str]:
    """(family, model) of a `--backbone` value.

    Raises:
        InputError: an unknown family or model, with "did you mean" from the family's own model list.
    """
    family_name, sep, model = name.partition(":")
    if sep and family_name in BACKBONE_FAMILIES and BACKBONE_FAMILIES.get(family_name).prefixed:
        family = BACKBONE_FAMILIES.get(family_name)
        if not model:
            raise InputError(f"--backbone {name!r}: name a model after '{family_name}:'")
        if not family.is_model(model):
            close = difflib.get_close_matches(model, family.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(f'{family_name}:{c}') for c in close)}?" if close else ""
            raise InputError(f"--backbone {name!r}: {family_name} has no model {model!r}{hint} "
                             f"(`mlpl backbones --family {family_name}` lists them)")
        return family, model
    fixed = {m: f for f in BACKBONE_FAMILIES if not f.prefixed for m in f.list_models()}
    if name in fixed:
        return fixed[name], name
    prefixes = [f"{f.name}:MODEL" for f in BACKBONE_FAMILIES if f.prefixed]
    close = difflib.get_close_matches(name, list(fixed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"--backbone: unknown backbone {name!r}. Available: {sorted(fixed)} or {prefixes}{hint}")


def get_data_cfg(name: str, *, image_size: int | None = None, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, interpolation: str | None = None) -> DataCfg:
    """The input config of backbone `name` (its own pretrained configuration) with the given overrides."""
    family, model = find_backbone(name)
    return family.data_cfg(model).with_overrides(image_size=image_size, mean=mean, std=std,
                                                 interpolation=interpolation)


def create_backbone(name: str, image_size: int, *, pretrained: bool, weights: Path | None = None
                    ) -> tuple[Backbone, str]:
    """Build backbone `name` for `image_size` inputs and load its weights; returns it and what was loaded.

    Args:
        name: a `--backbone` value.
        image_size: the input side (position embeddings are sized to it).
        pretrained: load the library's own pretrained weights from its local cache.
        weights: a local weights file (wins over `pretrained`).

    Raises:
        InputError: unknown backbone, missing or unreadable weights, or weights of another architecture.
    """
    family, model = find_backbone(name)
    # the weights are found before anything is built: a missing file fails at once
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(f"--backbone-weights: {weights} is not a file")
        path, loaded = Path(weights), f"file {Path(weights).name} sha256 {sha256_file(weights)}"
        where = f"--backbone-weights {path}"
    elif pretrained:
        path, loaded = family.pretrained_file(model)
        where = f"{path} (pretrained weights of {name})"
    backbone = family.build(model, image_size)
    if weights is None and not pretrained:
        return backbone, "random-init"
    state = read_state_dict(path, "--backbone-weights" if weights is not None else "--pretrained")
    state = family.adapt_state(backbone, strip_run_prefix(state))
    load_checked(backbone, state, where, name)
    log.info("backbone %s: loaded %s", name, loaded)
    return backbone, loaded


def strip_run_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A run's own `best.safetensors` holds `backbone.*` and `head.*`: keep the backbone's part."""
    if state and all(k.startswith(("backbone.", "head.")) for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def list_backbones(family: str | None = None, pattern: str = "*") -> list[str]:
    """Every `--backbone` value of a family (all families if None) matching a shell-style pattern."""
    import fnmatch

    families = [BACKBONE_FAMILIES.get(family, option="--family")] if family else list(BACKBONE_FAMILIES)
    return [f"{f.name}:{m}" if f.prefixed else m for f in families for m in f.list_models()
            if fnmatch.fnmatch(m, pattern)]


def _register_families() -> None:
    from mlpl.stages.train.backbones import open_clip_towers, small_cnn, timm_models, torchvision_resnets

    for module in (torchvision_resnets, small_cnn, timm_models, open_clip_towers):
        BACKBONE_FAMILIES.register(module.FAMILY)


_register_families()
