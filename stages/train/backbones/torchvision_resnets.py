"""torchvision ResNets as backbones (the literature's ResNet-50 and its smaller sibling), weights from torch's hub
cache or a local file."""

from __future__ import annotations

from pathlib import Path

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.hub import torch_hub_file
from mlpl.stages.train.backbones import Backbone, BackboneFamilyInfo
from mlpl.stages.train.datacfg import IMAGENET_MEAN, IMAGENET_STD, DataCfg

WEIGHTS_URLS = {  # ImageNet-1k V1 weights, the ones the literature's numbers were measured with
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}

# The single-positive literature trains and evaluates torchvision's ResNet-50 at 448 px with plain (bilinear)
# resizing and ImageNet statistics, not at the weights' 224 px: these are the settings its numbers need.
LITERATURE_DATA = DataCfg(image_size=448, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")


class ResNetTrunk(Backbone):
    """A torchvision ResNet up to `layer4`: its feature map [B, D, H/32, W/32], without pooling and `fc`.

    The submodules keep torchvision's names, so torchvision's ImageNet state dicts (minus `fc.*`) load as they
    are and checkpoints keep their keys.
    """

    STEM_AND_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        for name in self.STEM_AND_STAGES:
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _build(model: str, image_size: int) -> Backbone:
    import torchvision

    return ResNetTrunk(getattr(torchvision.models, model)(weights=None))


def _pretrained_file(model: str) -> tuple[Path, str]:
    url = WEIGHTS_URLS[model]
    path = torch_hub_file(url)
    if not path.is_file():
        raise InputError(
            f"--backbone {model}: ImageNet weights not found at {path}; download {url} to that path "
            f"(or pass --backbone-weights FILE, or --no-pretrained to train from scratch)")
    return path, f"torchvision {path.name}"


def _adapt_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet's classifier: not ours


FAMILY = BackboneFamilyInfo(
    name="torchvision",
    description="torchvision ResNets with ImageNet-1k V1 weights (resnet50 is the literature's default)",
    reference="He et al. 2016; torchvision.models",
    prefixed=False,
    list_models=lambda: sorted(WEIGHTS_URLS),
    is_model=lambda model: model in WEIGHTS_URLS,
    data_cfg=lambda model: LITERATURE_DATA,
    build=_build,
    pretrained_file=_pretrained_file,
    adapt_state=_adapt_state,
)
