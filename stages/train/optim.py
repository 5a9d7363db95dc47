"""The optimiser registry: `optimizer` in a run's config names one frozen `OptimizerInfo` (docs/methods.md §1.5).

Most methods train with Adam (the literature's default); MIME's reference trains with Adamax
(docs/methods.md §3.9). Each entry builds `torch.optim` with the run's parameter groups, whose learning rates
the groups carry; no weight decay (none of the reference codes use it with these optimisers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from mlpl.stages.registry import Registry


@dataclass(frozen=True)
class OptimizerInfo:
    """A registered optimiser.

    Attributes:
        name: registry name (`optimizer` in presets, `--optimizer`).
        description: one line.
        reference: who uses it.
        build: `build(param_groups) -> torch.optim.Optimizer` (the groups carry their learning rates).
    """

    name: str
    description: str
    reference: str
    build: Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer]


OPTIMIZERS: Registry[OptimizerInfo] = Registry("optimizer")

OPTIMIZERS.register(OptimizerInfo(
    name="adam", description="Adam, torch's defaults (betas 0.9, 0.999; eps 1e-8)",
    reference="docs/methods.md §1.5 (every method but MIME)", build=lambda groups: torch.optim.Adam(groups),
))
OPTIMIZERS.register(OptimizerInfo(
    name="adamax", description="Adamax, torch's defaults (betas 0.9, 0.999; eps 1e-8)",
    reference="MIME's reference code (train_mime.py); docs/methods.md §3.9",
    build=lambda groups: torch.optim.Adamax(groups),
))


def get_optimizer_info(name: str) -> OptimizerInfo:
    """The registered optimiser `name`; an unknown name raises `InputError` listing the known ones."""
    return OPTIMIZERS.get(name, option="optimizer")


def create_optimizer(name: str, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Optimiser `name` over `param_groups` (each with its `lr`)."""
    return get_optimizer_info(name).build(param_groups)
