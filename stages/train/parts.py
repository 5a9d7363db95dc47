"""What a run optimises: the classifier (wrapped for DistributedDataParallel under torchrun) and its optimiser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from mlpl.stages.train.config import TrainCfg
from mlpl.stages.train.labelstate import LabelState
from mlpl.stages.train.models import Classifier, create_classifier, param_groups
from mlpl.stages.train.optim import create_optimizer


@dataclass
class TrainingParts:
    """The model, what the training step calls, the optimiser, and the label state's own parameters.

    Attributes:
        model: the classifier (what is saved and evaluated).
        forward: the module the training step calls: `model`, or its DistributedDataParallel wrapper.
        optimizer: the configured optimiser over the backbone, head and label state's parameter groups.
        state_params: the label state's parameters (outside DDP: their gradients are summed over ranks by hand).
        weights: a description of the backbone weights loaded (recorded in the run).
    """

    model: Classifier
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state_params: list[torch.nn.Parameter]
    weights: str


def build_parts(cfg: TrainCfg, num_classes: int, device: torch.device, labels: LabelState,
                world: int) -> TrainingParts:
    """The classifier on `device`; the optimiser over backbone, head and label-state groups (docs/methods.md §1.5)."""
    model, weights = create_classifier(cfg.backbone, num_classes, pretrained=cfg.pretrained,
                                       weights=Path(cfg.backbone_weights) if cfg.backbone_weights else None,
                                       head=cfg.head, head_params=cfg.head_params, family=cfg.family,
                                       image_size=cfg.data_cfg().image_size)
    model.to(device)
    forward: torch.nn.Module = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    state_groups = labels.param_groups(cfg.lr)
    state_params = [p for group in state_groups for p in group["params"]]
    optimizer = create_optimizer(cfg.optimizer, param_groups(model, cfg.lr, cfg.head_lr_mult) + state_groups)
    return TrainingParts(model, forward, optimizer, state_params, weights)
