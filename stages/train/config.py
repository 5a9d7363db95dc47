"""The typed configuration of a training run and the early-stopping rules of docs/methods.md §1.6."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mlpl.schemas.errors import check_range
from mlpl.stages.train.datacfg import DataCfg

EarlyStop = Literal["gr", "em", "ll", "none"]
PseudoMode = Literal["dynamic", "fixed", "accumulated"]
Decode = Literal["workers", "device"]


@dataclass(frozen=True)
class TrainCfg:
    """Everything a training run needs; saved resolved as the run's `config.toml`."""

    method: str
    dataset: str
    out: str
    description: str = ""
    reference: str = ""
    # the dataset's hyperparameter family (mlpl.stages.families); no default: a run never falls back to one
    family: str = field(kw_only=True)
    regime: str = "spml"
    pseudo_store: str | None = None
    needs_store: bool = False
    loss: str = "an"
    loss_params: dict[str, Any] = field(default_factory=dict)
    pseudo: str = "none"
    pseudo_params: dict[str, Any] = field(default_factory=dict)
    pseudo_mode: PseudoMode = "dynamic"  # dynamic: seed e mod S per epoch; fixed: seed 0 always; accumulated: union
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-5
    head_lr_mult: float = 10.0
    optimizer: str = "adam"  # mlpl.stages.train.optim.OPTIMIZERS (adamax: MIME, docs/methods.md §3.9)
    backbone: str = "resnet50"
    head: str = "linear"  # mlpl.stages.train.models.HEADS (boostlu: docs/methods.md §3.5)
    head_params: dict[str, Any] = field(default_factory=dict)
    label_state: str = "none"  # mlpl.stages.train.labelstate.LABEL_STATES (ROLE, EM-APL, LL-Cp, CDUL, ...)
    label_state_params: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    backbone_weights: str | None = None
    # the backbone's input (mlpl.stages.train.datacfg.DataCfg): None takes the backbone's own pretrained config;
    # `resolve_train_cfg` fills them in, so a run's config.toml records what was used
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    threshold: float = 0.5
    early_stop: EarlyStop = "none"  # docs/methods.md §1.6
    workers: int | str = "auto"  # DataLoader workers; 'auto': this process's cores minus one
    decode: Decode = "workers"  # where JPEGs are decoded: in the workers, or on the training device (nvJPEG)
    seed: int = 0
    device: str = "auto"
    max_batches: int = 0  # > 0: stop each epoch after this many batches (smoke runs)
    loggers: tuple[str, ...] = ()  # mlpl.stages.train.loggers.LOGGERS, besides metrics.jsonl

    def __post_init__(self) -> None:
        from mlpl.stages.families import get_family_info

        get_family_info(self.family, option="family")  # an unknown family is an error, never a default
        for key in ("mean", "std", "loggers"):  # a config.toml gives lists
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        for name, bounds in TRAIN_RANGES.items():
            if getattr(self, name) is not None:  # image_size None: the backbone's own
                check_range(name, getattr(self, name), **bounds)

    def data_cfg(self) -> DataCfg:
        """The backbone's input config with this run's overrides (the one place the stream and model read)."""
        from mlpl.stages.train.backbones import get_data_cfg

        return get_data_cfg(self.backbone, image_size=self.image_size, mean=self.mean, std=self.std,
                            interpolation=self.interpolation)


TRAIN_RANGES: dict[str, dict[str, float]] = {
    "epochs": {"ge": 1}, "batch_size": {"ge": 1}, "lr": {"gt": 0}, "head_lr_mult": {"gt": 0},
    "image_size": {"ge": 8}, "threshold": {"ge": 0, "le": 1}, "max_batches": {"ge": 0},
}
"""The ranges `TrainCfg` checks on construction (presets and command line alike; `workers`, a count or 'auto',
is checked by `mlpl.stages.runtime.resolve_workers`)."""


# docs/methods.md §1.6: (largest allowed drop below the best val mAP, epochs without improvement allowed)
EARLY_STOP_RULES: dict[str, tuple[float | None, int | None]] = {
    "gr": (2.0, 2),
    "em": (None, 1),
    "ll": (3.0, None),
    "none": (None, None),
}
if set(EARLY_STOP_RULES) != set(typing.get_args(EarlyStop)):
    raise RuntimeError("EARLY_STOP_RULES and EarlyStop name different rules")  # a wiring bug


def should_stop(rule: str, history: list[float]) -> bool:
    """Early stopping on the list of val mAPs so far (docs/methods.md §1.6)."""
    max_drop, patience = EARLY_STOP_RULES[rule]
    if len(history) < 2:
        return False
    best = max(history)
    if max_drop is not None and history[-1] < best - max_drop:
        return True
    if patience is not None:
        since_best = len(history) - 1 - history.index(best)
        return since_best >= patience
    return False


