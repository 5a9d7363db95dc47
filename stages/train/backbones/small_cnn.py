"""The digits world's backbone: a 4-block CNN, fast on CPU, trained from scratch (no pretrained weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.backbones import Backbone, BackboneFamilyInfo
from mlpl.stages.train.datacfg import DataCfg
from torch import nn

NAME = "small-cnn"
DIGITS_DATA = DataCfg(image_size=64)  # the digits canvases' side; ImageNet statistics, bilinear resizing


class SmallConvNet(Backbone):
    """A 4-block CNN for the digits world: its last block's map [B, 4·width, H/8, W/8]."""

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


def _pretrained_file(model: str) -> tuple[Path, str]:
    raise InputError(f"--backbone {model!r} has no pretrained weights; pass --no-pretrained")


FAMILY = BackboneFamilyInfo(
    name="mlpl",
    description="4-block CNN (64 features) for the digits world; no pretrained weights",
    reference="mlpl",
    prefixed=False,
    list_models=lambda: [NAME],
    is_model=lambda model: model == NAME,
    data_cfg=lambda model: DIGITS_DATA,
    build=lambda model, image_size: SmallConvNet(),
    pretrained_file=_pretrained_file,
    adapt_state=lambda backbone, state: state,
)
