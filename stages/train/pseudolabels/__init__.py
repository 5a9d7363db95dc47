"""The pseudo-labeller registry: rules that turn cached teacher similarities into pseudo-labels (stage two).

A pseudo-labeller is a pure, keyword-only function:

    fn(*, sims, observed, cfg, generator=None) -> Tensor[B, C] int8 of `Pseudo` values
    fn(*, sims, observed, cfg, generator=None, logits, epoch)      (when `needs_logits`)

- `sims` float [B, V, C]: raw cosine similarities from the store; view 0 is the global view, views
  1.. are the tiles in row-major order. A row containing NaN (an image the teacher could not read) gets
  all-0 (undefined) pseudo-labels; every labeller must honour this (`undefined_where_unreadable`).
- `observed` int [B, C] with `Observed` values.
- `generator` the source of randomness for random rules (ignored by deterministic ones).
- `logits` [B, C] (detached) and `epoch` (`EpochState`): given only to a labeller with `needs_logits`
  (rules that read the network, e.g. LL-Ct's corrections); `sims` is None for one without `uses_sims`.

The output holds the rule's result for every cell, observed ones included; consumers read it only where
`observed == 0` (losses take the observed label elsewhere; pseudo-label quality skips observed positives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from mlpl.schemas.labels import Pseudo
from mlpl.stages.families import FamilyInfo, build_cfg, check_family_table
from mlpl.stages.registry import Registry, register_with

PseudoLabelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class PseudoLabellerInfo:
    """A registered pseudo-labeller.

    Attributes:
        name: registry name (what configs and presets use).
        description: one line for `--help` and reports.
        reference: paper and docs/methods.md section.
        fn: the pure rule (see the module docstring for its signature).
        cfg_cls: frozen dataclass of its stage-two parameters; fields without a default are per-dataset.
        dataset_defaults: family name (`HYPERPARAMETER_FAMILIES`, stages/families.py) → field values.
        uses_sims: reads the store's similarities (the run then needs `--pseudo-store`).
        needs_logits: reads the network's logits of the batch (called after the forward pass).
    """

    name: str
    description: str
    reference: str
    fn: PseudoLabelFn
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]]
    uses_sims: bool = True
    needs_logits: bool = False

    def __post_init__(self) -> None:
        check_family_table(self.dataset_defaults, f"pseudo-labeller {self.name!r}")


PSEUDOLABELLERS: Registry[PseudoLabellerInfo] = Registry("pseudo-labeller")
register_pseudolabeller = register_with(PSEUDOLABELLERS, PseudoLabellerInfo, "fn")
"""`@register_pseudolabeller(name=..., ...)` on a pseudo-labelling function registers it."""


def get_pseudolabeller_info(name: str) -> PseudoLabellerInfo:
    """The registered pseudo-labeller `name`; an unknown name raises `InputError` listing the known ones."""
    return PSEUDOLABELLERS.get(name, option="pseudo")


def create_pseudo_cfg(name: str, dataset: FamilyInfo | str | None, overrides: Mapping[str, Any]) -> Any:
    """Build the frozen config of pseudo-labeller `name`: class defaults, the dataset's, then `overrides`.

    Args:
        name: registered pseudo-labeller name.
        dataset: a family (`FamilyInfo` or its name), or None (then every per-family field must be set).
        overrides: field → value; an unknown field or a value of the wrong type raises `InputError`.
    """
    info = get_pseudolabeller_info(name)
    return build_cfg(info.cfg_cls, f"pseudo-labeller {name!r}", info.dataset_defaults, dataset, overrides)


def check_pseudo_inputs(name: str, sims: torch.Tensor, observed: torch.Tensor, min_views: int = 1) -> None:
    """Raise `ValueError` (a wiring bug, not user input) unless sims is [B, V>=min_views, C] and observed [B, C]."""
    if sims.dim() != 3 or sims.shape[1] < min_views:
        raise ValueError(f"pseudo-labeller {name!r}: sims must be [B, V>={min_views}, C], got {tuple(sims.shape)}")
    if observed.shape != (sims.shape[0], sims.shape[2]):
        raise ValueError(f"pseudo-labeller {name!r}: observed shape {tuple(observed.shape)} does not match "
                         f"sims {tuple(sims.shape)}")


def readable_sims(sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sims` in a working precision (float32 for half, float64 kept) with NaN set to 0, and the [B] mask
    of unreadable rows (any NaN)."""
    work = sims.float() if sims.dtype in (torch.float16, torch.bfloat16) else sims
    unreadable = torch.isnan(work).flatten(1).any(dim=1)
    return torch.nan_to_num(work, nan=0.0), unreadable


def aggregate_tiles(s_tiles: torch.Tensor, threshold: torch.Tensor | float,
                    strict: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/methods.md §4.3's tile aggregation (DAMP; CDUL's initialisation, 4.4): per class, the largest tile score ω
    where it exceeds `threshold` (`>`, or `>=` when not `strict`), else the smallest ψ.

    Args:
        s_tiles: [B, T, C] per-tile class scores.
        threshold: a number, or a tensor broadcasting against [B, C] (DAMP's per-image ζ_local as [B, 1]).

    Returns:
        (ω, ψ, S_agg), each [B, C].
    """
    omega, psi = s_tiles.amax(dim=1), s_tiles.amin(dim=1)
    take_max = omega > threshold if strict else omega >= threshold
    return omega, psi, torch.where(take_max, omega, psi)


def undefined_where_unreadable(labels: torch.Tensor, unreadable: torch.Tensor) -> torch.Tensor:
    """`labels` as int8 with every unreadable row set to `Pseudo.UNDEFINED`."""
    labels = labels.to(torch.int8)
    return labels.masked_fill(unreadable[:, None], int(Pseudo.UNDEFINED))


def _register_builtin() -> None:
    # One module per family; each registers its entries when imported. Every module of the package is one.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_builtin()
