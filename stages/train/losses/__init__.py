"""The loss registry: one frozen `LossInfo` per loss, typed per-dataset configs, and the loss call contract.

A loss is a pure, keyword-only function of tensors:

    fn(*, logits, observed, pseudo, epoch, cfg) -> LossOutput

- `logits` float [B, C] (half precision is computed in float32, float64 stays float64);
- `observed` int [B, C] with `mlpl.schemas.labels.Observed` values (+1 positive, 0 unknown, −1 negative);
- `pseudo` int [B, C] with `mlpl.schemas.labels.Pseudo` values, or None. A pseudo-labeller returns its rule's
  output for every cell; a loss reads it only where `observed == 0` (the observed label wins elsewhere);
- `epoch` the `EpochState` (schedules are functions of it, never of hidden counters);
- `cfg` the loss's frozen config dataclass, built with `create_loss_cfg`.

It returns the per-cell terms and the regulariser; `total` is their one reduction (docs/methods.md: mean over all
B·C cells, cells without a term included, plus the regulariser unnormalised).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from mlpl.stages.families import FamilyInfo, build_cfg, check_family_table
from mlpl.stages.registry import Registry, register_with


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
        aux: loss-specific by-products other parts read (e.g. LL's `corrected` [B, C] bool mask, which the
            `ll-cp` label state makes permanent and the `ll-ct` pseudo-labeller hands to other losses).
    """

    total: torch.Tensor
    cells: torch.Tensor
    regulariser: torch.Tensor
    aux: Mapping[str, torch.Tensor] = field(default_factory=dict)


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossInfo:
    """A registered loss.

    Attributes:
        name: registry name (what configs and presets use).
        description: one line for `--help` and reports.
        reference: paper and docs/methods.md section.
        fn: the pure loss function (see the module docstring for its signature).
        cfg_cls: frozen dataclass of its hyperparameters; fields without a default are per-dataset.
        dataset_defaults: family name (one of `HYPERPARAMETER_FAMILIES`, stages/families.py) → field overrides.
        needs_pseudo: True if `fn` requires `pseudo` (False: optional or ignored).
        label_state: the label state(s) (`mlpl.stages.train.labelstate.LABEL_STATES`) the loss reads, or None.
            Such a loss takes one more keyword, `state`: the dict of [B, C] tensors that state's
            `batch_state(rows)` gives for the batch (e.g. ROLE's label estimates, with their gradient).
        head_outputs: names of the head's training outputs the loss reads (`HeadOutput.aux` of
            `mlpl.stages.train.models`; e.g. SMILE's label-enhancement tensors). Such a loss takes one more
            keyword, `head`: the dict of those tensors for the batch; a run whose head does not give them fails
            before training.
    """

    name: str
    description: str
    reference: str
    fn: LossFn
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]]
    needs_pseudo: bool
    label_state: str | tuple[str, ...] | None = None
    head_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_family_table(self.dataset_defaults, f"loss {self.name!r}")

    @property
    def label_states(self) -> tuple[str, ...]:
        """The label states this loss can read (empty: it reads none)."""
        if self.label_state is None:
            return ()
        return (self.label_state,) if isinstance(self.label_state, str) else tuple(self.label_state)


LOSSES: Registry[LossInfo] = Registry("loss")
register_loss = register_with(LOSSES, LossInfo, "fn")
"""`@register_loss(name=..., description=..., ...)` on a loss function registers it."""


def get_loss_info(name: str) -> LossInfo:
    """The registered loss `name`; an unknown name raises `InputError` listing the known ones."""
    return LOSSES.get(name, option="loss")


def create_loss_cfg(name: str, dataset: FamilyInfo | str | None, overrides: Mapping[str, Any]) -> Any:
    """Build the frozen config of loss `name`: class defaults, then the dataset's, then `overrides`.

    Args:
        name: registered loss name.
        dataset: a family (`FamilyInfo`, e.g. a dataset's with its recorded m, or a family name), or None for
            the class defaults only (then every per-family field must be in `overrides`).
        overrides: field → value; an unknown field or a value of the wrong type raises `InputError`.
    """
    info = get_loss_info(name)
    return build_cfg(info.cfg_cls, f"loss {name!r}", info.dataset_defaults, dataset, overrides)


def nlog(x: torch.Tensor, eps: float) -> torch.Tensor:
    """docs/methods.md's `nlog(x) = −log(x + ε)`; each loss family passes the ε its reference code uses."""
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


def make_output(cells: torch.Tensor, regulariser: torch.Tensor | None = None,
                aux: Mapping[str, torch.Tensor] | None = None) -> LossOutput:
    """The one reduction of every loss: mean over all B·C cells plus the (already weighted) regulariser."""
    if regulariser is None:
        regulariser = cells.new_zeros(())
    return LossOutput(total=cells.mean() + regulariser, cells=cells, regulariser=regulariser, aux=dict(aux or {}))


def expected_positives_regulariser(p: torch.Tensor, m: float) -> torch.Tensor:
    """((mean over the batch of Σ_c p) − m)² / C², docs/methods.md §3.7 (m̂ per mini-batch; p not detached)."""
    return (p.sum(dim=1).mean() - m) ** 2 / p.shape[1] ** 2


def _register_builtin() -> None:
    # One module per family; each registers its entries when imported. Every module of the package is one.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_builtin()
