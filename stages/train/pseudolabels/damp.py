"""DAMP pseudo-labels from cached global and tile similarities (docs/methods.md §4.3).

Paper: Tran et al., "More Reliable Pseudo-labels, Better Performance: A Generalized Approach to Single
Positive Multi-label Learning", ICCV 2025 (Dynamic Augmented Multi-focus Pseudo-labelling, part of AEVLP).
Every parameter here is a stage-two parameter: re-tuning it never re-runs the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.train.pseudolabels import (
    aggregate_tiles,
    check_pseudo_inputs,
    readable_sims,
    register_pseudolabeller,
    undefined_where_unreadable,
)


@dataclass(frozen=True, kw_only=True)
class DampCfg:
    """Parameters of the DAMP rule (docs/methods.md §4.3).

    Attributes:
        tau: softmax temperature over classes, S = softmax(cos/τ) per view.
        nu: ν, the cap of the local threshold ζ_local = min(S_g[ĉ], ν) (ν alone without an observed positive).
        zeta_global: ζ_global, the least S_final of a positive pseudo-label.
        top_k: positives are taken among the top-k classes of S_final (the observed positive included).
        delta_neg: Δneg; the int(Δneg·C) classes of lowest S_avg get `negative_value`.
        negative_value: −1 (the paper: real negative pseudo-labels) or 0 (the released code: it writes 0,
            which only clears a positive that also ranks among the lowest).
        compare: how ω_c is compared with ζ_local: ">" (the released code) or ">=" (the paper).
    """

    tau: float
    nu: float
    zeta_global: float
    top_k: int
    delta_neg: float
    negative_value: Literal[-1, 0] = -1
    compare: Literal[">", ">="] = ">"

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise InputError(f"tau must be > 0, got {self.tau}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.delta_neg <= 1.0:
            raise InputError(f"delta_neg must be in [0, 1], got {self.delta_neg}")
        if self.negative_value not in (-1, 0):
            raise InputError(f"negative_value must be -1 or 0, got {self.negative_value!r}")
        if self.compare not in (">", ">="):
            raise InputError(f"compare must be '>' or '>=', got {self.compare!r}")


@dataclass(frozen=True)
class DampScores:
    """The intermediate scores of DAMP, each [B, C] except `zeta_local` [B]."""

    s_global: torch.Tensor
    omega: torch.Tensor
    psi: torch.Tensor
    zeta_local: torch.Tensor
    s_agg: torch.Tensor
    s_final: torch.Tensor
    s_avg: torch.Tensor


def damp_scores(sims: torch.Tensor, observed: torch.Tensor, cfg: DampCfg) -> DampScores:
    """S_g, ω, ψ, ζ_local, S_agg, S_final and S_avg of docs/methods.md §4.3 for NaN-free sims [B, V>=2, C].

    With several observed positives (partial-label regimes) S_g[ĉ] is their largest S_g, as the
    released code's max(S_g · y_obs) gives.
    """
    s = torch.softmax(sims / cfg.tau, dim=-1)
    s_global, s_tiles = s[:, 0], s[:, 1:]
    positive = observed == Observed.POSITIVE
    s_global_observed = s_global.masked_fill(~positive, float("-inf")).amax(dim=1)
    nu = torch.full_like(s_global_observed, cfg.nu)
    zeta_local = torch.where(positive.any(dim=1), torch.minimum(s_global_observed, nu), nu)
    omega, psi, s_agg = aggregate_tiles(s_tiles, zeta_local[:, None], strict=cfg.compare == ">")
    return DampScores(
        s_global=s_global,
        omega=omega,
        psi=psi,
        zeta_local=zeta_local,
        s_agg=s_agg,
        s_final=(s_global + s_agg) / 2,
        s_avg=(s_global + s_tiles.mean(dim=1)) / 2,
    )


# docs/methods.md §4.3's table; digits: chosen by validation mAP of AEVLP runs over a small grid
# (benchmarks/tune_digits_damp.py; the selection is recorded in benchmarks/RESULTS.md).
_DAMP_DEFAULTS: dict[str, dict] = {
    "voc": {"tau": 0.01, "nu": 0.0, "zeta_global": 0.5, "top_k": 3, "delta_neg": 0.2},
    "coco": {"tau": 0.01, "nu": 0.3, "zeta_global": 0.5, "top_k": 3, "delta_neg": 0.3},
    "nus": {"tau": 0.01, "nu": 0.3, "zeta_global": 0.6, "top_k": 3, "delta_neg": 0.2},
    "cub": {"tau": 0.1, "nu": 0.005, "zeta_global": 0.005, "top_k": 32, "delta_neg": 0.2},
    "digits": {"tau": 0.05, "nu": 0.3, "zeta_global": 0.3, "top_k": 3, "delta_neg": 0.3},
}


@register_pseudolabeller(
    name="damp",
    description="DAMP: global view plus max/min over tiles, top-k positives above a threshold, "
                "lowest-scoring classes negative",
    reference="Tran et al., ICCV 2025 (AEVLP); docs/methods.md §4.3",
    cfg_cls=DampCfg,
    dataset_defaults=_DAMP_DEFAULTS,
)
def damp(
    *,
    sims: torch.Tensor,
    observed: torch.Tensor,
    cfg: DampCfg,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DAMP pseudo-labels.

    +1 for the classes among the top-k of S_final (ranking includes the observed positive) whose
    S_final >= ζ_global; then `negative_value` for the int(Δneg·C) classes of lowest S_avg, written last
    so that it overrides a positive (as the released code's order does). Ties in either ranking go to the
    lower class index (a stable sort), so the result is deterministic.

    Args:
        sims: [B, V, C] raw cosines, view 0 global, V >= 2 (DAMP needs tiles).
        observed: [B, C] `Observed` values (only the observed positive is used, for ζ_local).
        cfg: `DampCfg`.
        generator: unused (DAMP is deterministic).

    Returns:
        [B, C] int8 `Pseudo` values for every cell (observed cells included; consumers read unknown
        cells only); all 0 for a row whose sims contain NaN.
    """
    check_pseudo_inputs("damp", sims, observed, min_views=2)
    work, unreadable = readable_sims(sims)
    scores = damp_scores(work, observed, cfg)
    num_classes = work.shape[2]
    labels = torch.zeros(observed.shape, dtype=torch.int8, device=work.device)
    k = min(cfg.top_k, num_classes)
    if k > 0:
        top = torch.sort(scores.s_final, dim=1, descending=True, stable=True).indices[:, :k]
        in_top = torch.zeros_like(labels, dtype=torch.bool).scatter_(1, top, True)
        labels[in_top & (scores.s_final >= cfg.zeta_global)] = int(Pseudo.POSITIVE)
    num_negatives = int(cfg.delta_neg * num_classes)  # int() truncates, as the released code does
    if num_negatives > 0:
        lowest = torch.sort(scores.s_avg, dim=1, stable=True).indices[:, :num_negatives]
        labels.scatter_(1, lowest, cfg.negative_value)
    return undefined_where_unreadable(labels, unreadable)


