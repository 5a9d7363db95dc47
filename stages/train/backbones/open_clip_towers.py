"""open_clip image towers as backbones (`--backbone open_clip:MODEL[@TAG]`, `open_clip:hf-hub:ORG/NAME`,
`open_clip:local-dir:FOLDER`): pooled features are the tower's image embedding, the map is a ViT's patch tokens on
their grid (or a ModifiedResNet's last stage, or a timm trunk's map); input config from open_clip's preprocessing
of the weights (a tag's mean/std, a model folder's `preprocess_cfg`)."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.hub import open_clip_hub_folder, open_clip_tag_candidates, open_clip_tag_hint
from mlpl.stages.train.backbones import Backbone, BackboneFamilyInfo, unsupported_map
from mlpl.stages.train.backbones.timm_models import feature_map
from mlpl.stages.train.datacfg import INTERPOLATIONS, DataCfg

PREFIX = "open_clip"
DEFAULT_TAG = "openai"
SCHEMAS = ("hf-hub:", "local-dir:")
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "model.safetensors", "pytorch_model.bin")


class OpenClipTower(Backbone):
    """An open_clip image tower (`visual`, open_clip's own names, so full CLIP checkpoints' `visual.*` keys fit)."""

    def __init__(self, visual: torch.nn.Module, name: str) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.visual = visual
        self.name = name
        if isinstance(visual, VisionTransformer):
            visual.output_tokens = True  # (pooled, patch tokens after the final norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        v = self.visual
        if isinstance(v, VisionTransformer):
            _, tokens = v(x)
            grid = tuple(v.grid_size)
            if tokens.ndim != 3 or tokens.shape[1] != grid[0] * grid[1]:
                raise unsupported_map(self.name, tuple(tokens.shape))
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        if isinstance(v, ModifiedResNet):
            return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        if isinstance(v, TimmModel):
            return feature_map(v.trunk, v.trunk.forward_features(x), tuple(x.shape[-2:]), self.name)
        raise unsupported_map(self.name, tuple(self.pooled(x).shape))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out


def _split(model: str) -> tuple[str, str | None]:
    """(model, tag) of `MODEL@TAG`; hf-hub and local-dir models carry their weights and take no tag."""
    if model.startswith(SCHEMAS):
        return model, None
    name, _, tag = model.partition("@")
    return name.replace("/", "-"), tag or None


def _folder(model: str) -> Path:
    if model.startswith("hf-hub:"):
        return open_clip_hub_folder(model.removeprefix("hf-hub:"), f"--backbone {PREFIX}:")
    folder = Path(model.removeprefix("local-dir:"))
    if not (folder / "open_clip_config.json").is_file():
        raise InputError(f"--backbone {PREFIX}:{model}: no open_clip_config.json in {folder}; expected an open_clip "
                         "model folder (open_clip_config.json with 'model_cfg', plus a weights file)")
    return folder


def _configs(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, preprocessing of its weights) without building anything."""
    import open_clip

    name, tag = _split(model)
    if name.startswith(SCHEMAS):
        config = json.loads((_folder(name) / "open_clip_config.json").read_text())
        return config["model_cfg"], dict(config.get("preprocess_cfg", {}))
    model_cfg = open_clip.get_model_config(name)
    tag = tag or _default_tag(name)
    pcfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    if tag and not pcfg:
        raise InputError(f"--backbone {PREFIX}:{model}: {name} has no tag {tag!r}; its tags: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}")
    preprocess = {k: pcfg[k] for k in ("mean", "std", "interpolation") if k in pcfg}
    if pcfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
        model_cfg = {**model_cfg, "quick_gelu": True}  # the tag was trained with QuickGELU
    return model_cfg, preprocess


def _default_tag(name: str) -> str | None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return DEFAULT_TAG if DEFAULT_TAG in tags else (tags[0] if tags else None)


def _is_model(model: str) -> bool:
    import open_clip

    name, _ = _split(model)
    return name.startswith(SCHEMAS) or open_clip.get_model_config(name) is not None


def data_cfg(model: str) -> DataCfg:
    """The side of the tower's config; mean, std and filter of its weights' preprocessing (open_clip's defaults,
    the OpenAI statistics and bicubic, where the weights name none)."""
    from open_clip.transform import PreprocessCfg

    model_cfg, preprocess = _configs(model)
    size = model_cfg["vision_cfg"].get("image_size", PreprocessCfg().size)
    defaults = PreprocessCfg()
    interpolation = preprocess.get("interpolation", defaults.interpolation)
    return DataCfg(image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                   mean=tuple(preprocess.get("mean", defaults.mean)), std=tuple(preprocess.get("std", defaults.std)),
                   interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic")


def _build(model: str, image_size: int) -> Backbone:
    from open_clip.model import _build_vision_tower

    model_cfg, _ = _configs(model)
    vision_cfg = {**copy.deepcopy(model_cfg["vision_cfg"]), "image_size": image_size}
    try:
        visual = _build_vision_tower(model_cfg["embed_dim"], vision_cfg,
                                     quick_gelu=bool(model_cfg.get("quick_gelu", False)))
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise InputError(f"--backbone {PREFIX}:{model}: open_clip could not build its image tower for {image_size} "
                         f"px inputs ({e.__class__.__name__}: {e})") from None
    return OpenClipTower(visual, f"{PREFIX}:{model}")


def _pretrained_file(model: str) -> tuple[Path, str]:
    import open_clip

    name, tag = _split(model)
    if name.startswith(SCHEMAS):
        folder = _folder(name)
        found = next((folder / f for f in FOLDER_WEIGHTS if (folder / f).is_file()), None)
        if found is None:
            raise InputError(f"--backbone {PREFIX}:{model}: no weights file in {folder}; expected one of "
                             f"{list(FOLDER_WEIGHTS)}")
        return found, f"open_clip {name}"
    tag = tag or _default_tag(name)
    if tag is None:
        raise InputError(f"--backbone {PREFIX}:{model}: open_clip has no pretrained tag for {name}; pass "
                         "--backbone-weights FILE or --no-pretrained")
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    candidates = open_clip_tag_candidates(pcfg, None)
    for _, path in candidates:
        if path:
            return Path(path), f"open_clip {name}@{tag}"
    looked = "; ".join(desc for desc, _ in candidates)
    raise InputError(f"--backbone {PREFIX}:{model}: weights {name}@{tag} are not in the local cache; looked for "
                     f"{looked}. To get them, {open_clip_tag_hint(name, tag, pcfg)}; or pass --backbone-weights "
                     "FILE, or --no-pretrained")


def _adapt_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("visual.") for k in state):  # a whole CLIP: keep the image tower
        from open_clip.model import resize_pos_embed

        state = {k: v for k, v in state.items() if k.startswith("visual.")}
        resize_pos_embed(state, types.SimpleNamespace(visual=backbone.visual))
        return state
    return {f"visual.{k}": v for k, v in state.items()}  # the tower alone


def _list_models() -> list[str]:
    import open_clip

    return open_clip.list_models()


FAMILY = BackboneFamilyInfo(
    name=PREFIX,
    description="an open_clip image tower (open_clip:ViT-L-14, open_clip:ViT-B-16@openai, open_clip:hf-hub:ORG/NAME, "
                "open_clip:local-dir:FOLDER); the CLIP image embedding as pooled features",
    reference="open_clip (Ilharco et al.); Radford et al. 2021",
    prefixed=True,
    list_models=_list_models,
    is_model=_is_model,
    data_cfg=data_cfg,
    build=_build,
    pretrained_file=_pretrained_file,
    adapt_state=_adapt_state,
)
