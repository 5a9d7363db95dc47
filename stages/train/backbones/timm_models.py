"""Any timm model as a backbone (`--backbone timm:NAME`, NAME as `timm.create_model` takes it, tag included): the
feature map from `forward_features` (NHWC maps transposed, ViT patch tokens laid out on their grid), pooled features
from `forward_head(pre_logits=True)`, input config from timm's pretrained data config, weights from a local file or
timm's cache, converted by the model's own checkpoint filter."""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.hub import hf_cached_file, hf_download_hint, torch_hub_file
from mlpl.stages.train.backbones import Backbone, BackboneFamilyInfo, unsupported_map
from mlpl.stages.train.datacfg import INTERPOLATIONS, DataCfg

log = logging.getLogger(__name__)

PREFIX = "timm"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
def feature_map(model: Any, feats: torch.Tensor, input_hw: tuple[int, int], name: str) -> torch.Tensor:
    """A timm model's `forward_features` output as a map [B, D, h, w]: NCHW as is, NHWC transposed, tokens
    (prefix tokens dropped) laid out on the patch grid.

    Raises:
        InputError: the output is neither (pooled vectors, tokens that form no grid).
    """
    if feats.ndim == 4:
        fmt = getattr(model, "output_fmt", "NCHW")
        return feats.permute(0, 3, 1, 2) if str(getattr(fmt, "value", fmt)) == "NHWC" else feats
    if feats.ndim != 3:
        raise unsupported_map(name, tuple(feats.shape))
    tokens = feats[:, int(getattr(model, "num_prefix_tokens", 0)):]
    n = tokens.shape[1]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    grid = None
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        if (input_hw[0] // ph) * (input_hw[1] // pw) == n:
            grid = (input_hw[0] // ph, input_hw[1] // pw)
    if grid is None and math.isqrt(n) ** 2 == n:
        grid = (math.isqrt(n), math.isqrt(n))
    if grid is None:
        raise unsupported_map(name, tuple(feats.shape))
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class TimmBackbone(Backbone):
    """A timm model built with `num_classes=0` (no classifier); its weights are under `model.`."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map(self.model, self.model.forward_features(x), tuple(x.shape[-2:]), self.name)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@functools.cache
def _known() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models()) | frozenset(timm.list_models(pretrained=True))


def _is_model(model: str) -> bool:
    import timm

    return timm.is_model(model) and (("." not in model) or model in _known())


def pretrained_cfg(model: str) -> dict[str, Any]:
    """timm's pretrained config of `model` (its default tag when none is named); empty if it has none."""
    import timm

    cfg = timm.get_pretrained_cfg(model)
    return cfg.to_dict() if cfg is not None else {}


def data_cfg(model: str) -> DataCfg:
    """Input side, mean/std and resize filter from timm's data config of the model's pretrained weights."""
    from timm.data import resolve_data_config

    resolved = resolve_data_config(pretrained_cfg=pretrained_cfg(model) or None)
    interpolation = resolved.get("interpolation", "bicubic")
    return DataCfg(image_size=int(resolved["input_size"][-1]), mean=tuple(resolved["mean"]),
                   std=tuple(resolved["std"]),
                   interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic")


def _build(model: str, image_size: int) -> Backbone:
    import timm

    # models with a fixed input size (ViTs: position embeddings, windows) are built for the run's side
    kwargs = {"img_size": image_size} if pretrained_cfg(model).get("fixed_input_size") else {}
    try:
        net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise InputError(f"--backbone {PREFIX}:{model}: timm could not build it for {image_size} px inputs "
                         f"({e.__class__.__name__}: {e}); try --image-size {data_cfg(model).image_size}") from None
    return TimmBackbone(net, f"{PREFIX}:{model}")


def _pretrained_file(model: str) -> tuple[Path, str]:
    cfg = pretrained_cfg(model)
    if not cfg:
        raise InputError(f"--backbone {PREFIX}:{model}: timm has no pretrained weights for it; pass "
                         "--backbone-weights FILE or --no-pretrained")
    tag = f"{cfg.get('architecture', model)}.{cfg.get('tag')}" if cfg.get("tag") else model
    candidates: list[tuple[str, str | None]] = []
    hub = cfg.get("hf_hub_id")
    if hub:
        for name in ([cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else HUB_WEIGHTS):
            candidates.append((f"hf-hub {hub}/{name}", hf_cached_file(hub, name)))
    if cfg.get("url") and not cfg.get("custom_load"):  # custom formats (.npz) need timm's own loader
        path = torch_hub_file(cfg["url"])
        candidates.append((str(path), str(path) if path.is_file() else None))
    for desc, found in candidates:
        if found:
            return Path(found), f"timm {tag} ({desc})"
    looked = "; ".join(desc for desc, _ in candidates) or "(timm names no file)"
    steps = ([hf_download_hint(hub, [HUB_WEIGHTS[0]])] if hub else []) + [
        f"`python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"`"]
    raise InputError(f"--backbone {PREFIX}:{model}: pretrained weights {tag} are not in the local cache; looked for "
                     f"{looked}. To get them, on a machine with network run {' or '.join(steps)}; or pass "
                     "--backbone-weights FILE, or --no-pretrained to train from scratch")


def _adapt_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    net = backbone.model
    if state and all(k.startswith("model.") for k in state):  # a TimmBackbone's own state dict
        state = {k[len("model."):]: v for k, v in state.items()}
    # the model's own converter: original-repository formats (ConvNeXt's, DeiT's), position-embedding resampling
    convert = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, net)
        except Exception as e:  # a converter meeting another architecture's keys fails in its own way
            log.debug("timm checkpoint filter of %s failed (%s); keys used as they are", type(net).__name__, e)
    own = net.state_dict()
    classifiers = net.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {k: v for k, v in state.items()
             if k in own or not any(k.startswith(c + ".") for c in classifiers)}  # ImageNet's classifier: not ours
    return {f"model.{k}": v for k, v in state.items()}


FAMILY = BackboneFamilyInfo(
    name=PREFIX,
    description="any timm model (timm:NAME, e.g. timm:convnext_large.fb_in22k, timm:efficientnet_b0, "
                "timm:vit_base_patch16_224); its own data config",
    reference="timm (Wightman, pytorch-image-models)",
    prefixed=True,
    list_models=lambda: sorted(_known()),
    is_model=_is_model,
    data_cfg=data_cfg,
    build=_build,
    pretrained_file=_pretrained_file,
    adapt_state=_adapt_state,
)
