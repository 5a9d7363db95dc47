"""Simple pseudo-labellers: `vlpl` (global-view threshold), `random` and `none` (docs/methods.md §4.4).

Papers: Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label Learning", 2023 (VLPL);
Tran et al., ICCV 2025, Table 2 (random pseudo-labels fed to GPR as a control).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.families import HYPERPARAMETER_FAMILIES, M_FROM_FAMILY, NO_FAMILY_VALUES
from mlpl.stages.train.pseudolabels import (
    check_pseudo_inputs,
    readable_sims,
    register_pseudolabeller,
    undefined_where_unreadable,
)


@dataclass(frozen=True, kw_only=True)
class VlplCfg:
    """Parameters of the VLPL rule.

    Attributes:
        tau: softmax temperature over classes of the global view.
        threshold: a class is positive where its softmax score is strictly greater than this.
    """

    tau: float = 0.01
    threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise InputError(f"tau must be > 0, got {self.tau}")


@dataclass(frozen=True, kw_only=True)
class RandomCfg:
    """Parameters of random pseudo-labels.

    Attributes:
        m: expected positives per image; each image gets (m − 1) random positives on average.
    """

    m: float

    def __post_init__(self) -> None:
        if self.m < 1:
            raise InputError(f"m (expected positives per image) must be >= 1, got {self.m}")


@dataclass(frozen=True)
class NoneCfg:
    """`none` has no parameters."""


@register_pseudolabeller(
    name="vlpl",
    description="VLPL: positives where the global view's softmax score exceeds a threshold",
    reference="Xing et al., 2023 (VLPL); docs/methods.md §4.4",
    cfg_cls=VlplCfg,
    dataset_defaults={name: {"tau": 0.01, "threshold": 0.3} for name in HYPERPARAMETER_FAMILIES},
)
def vlpl(
    *,
    sims: torch.Tensor,
    observed: torch.Tensor,
    cfg: VlplCfg,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VLPL: +1 where softmax(cos/τ) of the global view exceeds the threshold; no negatives.

    Args:
        sims: [B, V, C] raw cosines; only view 0 (global) is read.
        observed: [B, C] `Observed` values (unused by the rule).
        cfg: `VlplCfg`.
        generator: unused (deterministic).

    Returns:
        [B, C] int8 of +1/0 for every cell; all 0 for a row whose sims contain NaN.
    """
    check_pseudo_inputs("vlpl", sims, observed)
    work, unreadable = readable_sims(sims)
    scores = torch.softmax(work[:, 0] / cfg.tau, dim=-1)
    labels = torch.where(scores > cfg.threshold, int(Pseudo.POSITIVE), int(Pseudo.UNDEFINED))
    return undefined_where_unreadable(labels, unreadable)


@register_pseudolabeller(
    name="random",
    description="random positives among unknown labels, (m - 1) per image on average",
    reference="Tran et al., ICCV 2025, Table 2 (GPR+Random); docs/methods.md §4.4",
    cfg_cls=RandomCfg,
    dataset_defaults=M_FROM_FAMILY,  # m: the family's expected positives (docs/methods.md §1.1)
)
def random_positives(
    *,
    sims: torch.Tensor,
    observed: torch.Tensor,
    cfg: RandomCfg,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random positives: each unknown cell of an image is +1 with probability min(1, (m−1)/#unknown).

    So an image gets (m − 1) positives on average (fewer only when it has fewer unknown cells than that).
    An image without an observed positive gets the same (m − 1).

    Args:
        sims: [B, V, C]; read only for unreadable rows (NaN).
        observed: [B, C] `Observed` values; only unknown (0) cells can become positive.
        cfg: `RandomCfg`.
        generator: source of the draws (on its own device; CPU when None uses torch's default generator).

    Returns:
        [B, C] int8 of +1/0 (0 on every observed cell and on unreadable rows).
    """
    check_pseudo_inputs("random", sims, observed)
    _, unreadable = readable_sims(sims)
    unknown = observed == Observed.UNKNOWN
    num_unknown = unknown.sum(dim=1, keepdim=True).to(torch.float64)
    probability = ((cfg.m - 1) / num_unknown.clamp_min(1)).clamp(0.0, 1.0)
    device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand(observed.shape, generator=generator, dtype=torch.float64, device=device)
    labels = unknown & (draws.to(observed.device) < probability)
    return undefined_where_unreadable(labels, unreadable)


@register_pseudolabeller(
    name="none",
    description="no pseudo-labels (all undefined)",
    reference="docs/methods.md §4.4",
    cfg_cls=NoneCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    uses_sims=False,
)
def no_pseudo_labels(
    *,
    sims: torch.Tensor | None,
    observed: torch.Tensor,
    cfg: NoneCfg,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """All cells undefined (0): methods without pseudo-labels.

    Args:
        sims: [B, V, C] or None (not read).
        observed: [B, C] `Observed` values.
        cfg: `NoneCfg`.
        generator: unused.

    Returns:
        [B, C] int8 zeros.
    """
    if sims is not None:
        check_pseudo_inputs("none", sims, observed)
    return torch.zeros(observed.shape, dtype=torch.int8, device=observed.device)


