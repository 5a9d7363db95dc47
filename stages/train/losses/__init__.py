"""The loss registry: one frozen `LossInfo` per loss, typed per-dataset configs, and the loss call contract.

A loss is a pure, keyword-only function of tensors:

    fn(*, logits, observed, pseudo, epoch, cfg) -> LossOutput

- `logits` float [B, C] (half precision is computed in float32, float64 stays float64);
- `observed` int [B, C] with `schemas.labels.Observed` values (+1 positive, 0 unknown, −1 negative);
- `pseudo` int [B, C] with `schemas.labels.Pseudo` values, or None. A pseudo-labeller returns its rule's
  output for every cell; a loss reads it only where `observed == 0` (the observed label wins elsewhere);
- `epoch` the `EpochState` (schedules are functions of it, never of hidden counters);
- `cfg` the loss's frozen config dataclass, built with `create_loss_cfg`.

It returns the per-cell terms and the regulariser; `total` is their one reduction (SPEC.md: mean over all
B·C cells, cells without a term included, plus the regulariser unnormalised).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from schemas.errors import InputError
from stages.registry import Registry

HYPERPARAMETER_DATASETS: tuple[str, ...] = ("voc", "coco", "nus", "cub", "digits")
"""Dataset families with their own hyperparameters (VOC 2007 and 2012 share `voc`)."""


@dataclass(frozen=True)
class EpochState:
    """Where training is: `epoch` is 1-based, `num_epochs` the planned total T."""

    epoch: int
    num_epochs: int

    def __post_init__(self) -> None:
        if self.num_epochs < 1 or not 1 <= self.epoch <= self.num_epochs:
            raise ValueError(f"EpochState needs 1 <= epoch <= num_epochs, got {self.epoch}/{self.num_epochs}")


@dataclass(frozen=True)
class LossOutput:
    """A loss's result.

    Attributes:
        total: scalar tensor to back-propagate: `cells.mean() + regulariser`.
        cells: [B, C] per-cell terms (0 where a cell has no term).
        regulariser: scalar tensor, already weighted (0 for losses without one).
    """

    total: torch.Tensor
    cells: torch.Tensor
    regulariser: torch.Tensor


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossInfo:
    """A registered loss.

    Attributes:
        name: registry name (what configs and presets use).
        description: one line for `--help` and reports.
        reference: paper and SPEC.md section.
        fn: the pure loss function (see the module docstring for its signature).
        cfg_cls: frozen dataclass of its hyperparameters; fields without a default are per-dataset.
        dataset_defaults: family name (one of `HYPERPARAMETER_DATASETS`) → field overrides.
        needs_pseudo: True if `fn` requires `pseudo` (False: optional or ignored).
    """

    name: str
    description: str
    reference: str
    fn: LossFn
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]]
    needs_pseudo: bool


LOSSES: Registry[LossInfo] = Registry("loss")


def get_loss_info(name: str) -> LossInfo:
    """The registered loss `name`; an unknown name raises `InputError` listing the known ones."""
    return LOSSES.get(name, option="loss")


def create_loss_cfg(name: str, dataset: str | None, overrides: Mapping[str, Any]) -> Any:
    """Build the frozen config of loss `name`: class defaults, then the dataset's, then `overrides`.

    Args:
        name: registered loss name.
        dataset: a family of `HYPERPARAMETER_DATASETS`, or None for the class defaults only (then every
            per-dataset field must be in `overrides`).
        overrides: field → value; an unknown field or a value of the wrong type raises `InputError`.
    """
    info = get_loss_info(name)
    return build_cfg(info.cfg_cls, f"loss {name!r}", info.dataset_defaults, dataset, overrides)


def build_cfg(
    cfg_cls: type,
    what: str,
    dataset_defaults: Mapping[str, Mapping[str, Any]],
    dataset: str | None,
    overrides: Mapping[str, Any],
) -> Any:
    """Merge class defaults, per-dataset defaults and overrides into a frozen `cfg_cls`, checking every key.

    Shared by the loss and pseudo-labeller registries. Values are checked against the field's annotation
    (int is accepted for float, a list for a tuple); `cfg_cls.__post_init__` checks ranges.

    Raises:
        InputError: unknown dataset family, unknown key, wrong type, or a per-dataset field left unset.
    """
    values: dict[str, Any] = {}
    if dataset is not None:
        if dataset not in HYPERPARAMETER_DATASETS:
            raise InputError(f"{what}: unknown dataset family {dataset!r} for hyperparameters. "
                             f"Available: {list(HYPERPARAMETER_DATASETS)}")
        values.update(dataset_defaults.get(dataset, {}))
    values.update(overrides)
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{what}: unknown option(s) {unknown}. Available: {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"{what}: {missing} have no default without a dataset; pass a dataset family "
                         f"({list(HYPERPARAMETER_DATASETS)}) or set them")
    checked = {key: _check_type(value, hints[key], f"{what}: option {key!r}") for key, value in values.items()}
    try:
        return cfg_cls(**checked)
    except InputError as error:  # a range check in __post_init__: say whose option it is
        raise InputError(f"{what}: {error}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to `hint` (int → float, list → tuple) or an `InputError` naming `where`."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        raise InputError(f"{where} must be one of {list(allowed)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is type(None) and value is None:
                return None
            if arm is not type(None):
                try:
                    return _check_type(value, arm, where)
                except InputError:
                    continue
        raise InputError(f"{where} must be {hint}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise InputError(f"{where} must have {len(args)} entries, got {list(value)!r}")
        return tuple(_check_type(v, a, where) for v, a in zip(value, args))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(f"{where} must be a number, got {value!r}")
    if hint in (int, bool, str) and type(value) is not hint:
        raise InputError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value


def nlog(x: torch.Tensor, eps: float) -> torch.Tensor:
    """SPEC.md's `nlog(x) = −log(x + ε)`; each loss family passes the ε its reference code uses."""
    return -torch.log(x + eps)


def working_logits(logits: torch.Tensor) -> torch.Tensor:
    """`logits` in the precision losses compute in: float32 for half types (AMP), else unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def check_loss_inputs(name: str, logits: torch.Tensor, observed: torch.Tensor,
                      pseudo: torch.Tensor | None, needs_pseudo: bool) -> None:
    """Raise `ValueError` (a wiring bug, not user input) on shapes that do not match [B, C]."""
    if logits.dim() != 2:
        raise ValueError(f"loss {name!r}: logits must be [B, C], got shape {tuple(logits.shape)}")
    if observed.shape != logits.shape:
        raise ValueError(f"loss {name!r}: observed shape {tuple(observed.shape)} != logits {tuple(logits.shape)}")
    if pseudo is None:
        if needs_pseudo:
            raise ValueError(f"loss {name!r} needs pseudo-labels; got pseudo=None")
    elif pseudo.shape != logits.shape:
        raise ValueError(f"loss {name!r}: pseudo shape {tuple(pseudo.shape)} != logits {tuple(logits.shape)}")


def make_output(cells: torch.Tensor, regulariser: torch.Tensor | None = None) -> LossOutput:
    """The one reduction of every loss: mean over all B·C cells plus the (already weighted) regulariser."""
    if regulariser is None:
        regulariser = cells.new_zeros(())
    return LossOutput(total=cells.mean() + regulariser, cells=cells, regulariser=regulariser)


def _register_builtin() -> None:
    # One module per loss family; each registers its losses when imported.
    import stages.train.losses.baseline  # noqa: F401
    import stages.train.losses.robust  # noqa: F401


_register_builtin()
