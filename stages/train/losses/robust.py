"""Robust losses `gr` (docs/methods.md §3.6) and `gpr` (docs/methods.md §3.7) for single-positive labels
with pseudo-labels.

Papers: Chen et al., "Boosting Single Positive Multi-label Classification with Generalized Robust Loss",
IJCAI 2024 (GR); Tran et al., "More Reliable Pseudo-labels, Better Performance: A Generalized Approach
to Single Positive Multi-label Learning", ICCV 2025 (GPR, the loss of AEVLP).

The log terms are docs/methods.md's `nlog(x) = −log(x + ε)` with ε = 1e-7, because the released GR/GPR code
computes `-log(preds + 1e-7)` and the reference numbers depend on that cap. The power terms p^q2 and
(1−p)^q1 have no ε in the reference; they are computed as exp(q·logsigmoid(±s)), which is the same value
(to rounding) with a finite gradient even where sigmoid underflows to 0 (torch.pow's gradient is NaN there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed, Pseudo
from mlpl.stages.families import EXPECTED_POSITIVES
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    expected_positives_regulariser,
    make_output,
    nlog,
    register_loss,
    working_logits,
)

EPS = 1e-7  # the released GR/GPR code's LOG_EPSILON

_BETA_VOC = (0.0, 2.0, -2.0, -2.0)
_BETA_OTHER = (0.0, 10.0, -2.0, -8.0)
_ALPHA = (0.5, 2.0, 0.8, 0.5)


@dataclass(frozen=True, kw_only=True)
class GrCfg:
    """Hyperparameters of GR (docs/methods.md §3.6).

    Attributes:
        beta: [w0, wT, b0, bT], the schedule of k̂'s slope w and offset b (per dataset).
        alpha: [μ0, σ0, μT, σT], the schedule of v's centre μ and width σ.
        q1: exponent of the (1 − k̂) term; q1 = 1 makes it p (CUB uses 1.5).
        q2: exponent of the k̂ term; q2 → 0 makes it −log p.
    """

    beta: tuple[float, float, float, float]
    alpha: tuple[float, float, float, float] = _ALPHA
    q1: float = 1.0
    q2: float = 0.01

    def __post_init__(self) -> None:
        if self.q1 <= 0 or self.q2 <= 0:
            raise InputError(f"q1 and q2 must be > 0, got q1={self.q1}, q2={self.q2}")
        if self.alpha[1] <= 0 or self.alpha[3] <= 0:
            raise InputError(f"alpha's σ0 and σT must be > 0, got alpha={list(self.alpha)}")


@dataclass(frozen=True, kw_only=True)
class GprCfg(GrCfg):
    """Hyperparameters of GPR (docs/methods.md §3.7): GR's, plus the pseudo-label and regulariser weights.

    Attributes:
        q3: weight of nlog(p) in a positive pseudo-label's term (the code's `rho`).
        lambda1: lower clip of v4 = 1 − v for positive pseudo-labels.
        lambda2: upper clip of v4.
        eta: weight of the expected-positives regulariser (the code's `reg`).
        m: expected number of positives per image.
    """

    q3: float = 0.9
    lambda1: float
    lambda2: float
    eta: float
    m: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lambda1 <= self.lambda2 <= 1.0:
            raise InputError(f"need 0 <= lambda1 <= lambda2 <= 1, got [{self.lambda1}, {self.lambda2}]")
        if not 0.0 <= self.q3 <= 1.0:
            raise InputError(f"q3 must be in [0, 1], got {self.q3}")
        if self.eta < 0 or self.m < 0:
            raise InputError(f"eta and m must be >= 0, got eta={self.eta}, m={self.m}")


@dataclass(frozen=True)
class GrSchedule:
    """The GR weights' parameters for one epoch: k̂ = sigmoid(w·p + b), v = exp(−(p−μ)²/(2σ²))."""

    w: float
    b: float
    mu: float
    sigma: float


def gr_schedule(epoch: EpochState, beta: tuple[float, ...], alpha: tuple[float, ...]) -> GrSchedule:
    """docs/methods.md §3.6 schedules: w, b move by (e−1)/T (never reaching their end values), μ, σ by e/T.

    Args:
        epoch: current epoch e (1-based) of T.
        beta: [w0, wT, b0, bT].
        alpha: [μ0, σ0, μT, σT].
    """
    w0, w_end, b0, b_end = beta
    mu0, sigma0, mu_end, sigma_end = alpha
    lag = (epoch.epoch - 1) / epoch.num_epochs
    lead = epoch.epoch / epoch.num_epochs
    return GrSchedule(
        w=w0 + (w_end - w0) * lag,
        b=b0 + (b_end - b0) * lag,
        mu=mu0 + (mu_end - mu0) * lead,
        sigma=sigma0 + (sigma_end - sigma0) * lead,
    )


def gr_weights(p: torch.Tensor, schedule: GrSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """k̂ and v of docs/methods.md §3.6, from detached p (they are weights, not paths for the gradient)."""
    p = p.detach()
    k_hat = torch.sigmoid(schedule.w * p + schedule.b)
    v = torch.exp(-((p - schedule.mu) ** 2) / (2 * schedule.sigma ** 2))
    return k_hat, v


def _gr_unknown_term(x: torch.Tensor, k_hat: torch.Tensor, v: torch.Tensor, q1: float, q2: float) -> torch.Tensor:
    """v·[k̂·(1 − p^q2)/q2 + (1 − k̂)·(1 − (1−p)^q1)/q1] with p = sigmoid(x)."""
    p_pow_q2 = torch.exp(q2 * F.logsigmoid(x))
    not_p_pow_q1 = torch.exp(q1 * F.logsigmoid(-x))
    return v * (k_hat * (1 - p_pow_q2) / q2 + (1 - k_hat) * (1 - not_p_pow_q1) / q1)


_GR_DEFAULTS: dict[str, dict] = {
    "voc": {"beta": _BETA_VOC, "alpha": _ALPHA, "q1": 1.0, "q2": 0.01},
    "coco": {"beta": _BETA_OTHER, "alpha": _ALPHA, "q1": 1.0, "q2": 0.01},
    "nus": {"beta": _BETA_OTHER, "alpha": _ALPHA, "q1": 1.0, "q2": 0.01},
    "cub": {"beta": _BETA_OTHER, "alpha": _ALPHA, "q1": 1.5, "q2": 0.01},
    # digits: COCO's values (no paper tunes GR on digits).
    "digits": {"beta": _BETA_OTHER, "alpha": _ALPHA, "q1": 1.0, "q2": 0.01},
}
# docs/methods.md §3.7's table. digits: COCO's β, α, λ, η. m: the family's expected positives.
_GPR_DEFAULTS: dict[str, dict] = {
    name: {**_GR_DEFAULTS[name], "q3": 0.9, "m": EXPECTED_POSITIVES, **extra}
    for name, extra in {
        "voc": {"lambda1": 0.4, "lambda2": 0.7, "eta": 0.05},
        "coco": {"lambda1": 0.5, "lambda2": 0.7, "eta": 0.001},
        "nus": {"lambda1": 0.5, "lambda2": 0.7, "eta": 0.001},
        "cub": {"lambda1": 0.2, "lambda2": 0.8, "eta": 0.01},
        "digits": {"lambda1": 0.5, "lambda2": 0.7, "eta": 0.001},
    }.items()
}


@register_loss(
    name="gr",
    description="generalised robust loss: scheduled soft weights on unknown labels",
    reference="Chen et al., IJCAI 2024; docs/methods.md §3.6",
    cfg_cls=GrCfg,
    dataset_defaults=_GR_DEFAULTS,
    needs_pseudo=False,
)
def gr(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: GrCfg,
) -> LossOutput:
    """GR loss: nlog(p) on observed positives, the weighted robust term on unknown cells.

    An observed negative (partial-label regimes; the GR paper defines no term for it) gets GPR's negative term
    v·nlog(1−p), as the released GPR code gives every cell whose final label is −1.

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored (GR uses no pseudo-labels; see `gpr`).
        epoch: the current epoch; the schedules of k̂ and v depend on it.
        cfg: `GrCfg`.

    Returns:
        The per-cell terms and a zero regulariser.
    """
    check_loss_inputs("gr", logits, observed, pseudo, needs_pseudo=False)
    x = working_logits(logits)
    p = torch.sigmoid(x)
    k_hat, v = gr_weights(p, gr_schedule(epoch, cfg.beta, cfg.alpha))
    cells = torch.where(
        observed == Observed.POSITIVE, nlog(p, EPS),
        torch.where(observed == Observed.NEGATIVE, v * nlog(1 - p, EPS),
                    _gr_unknown_term(x, k_hat, v, cfg.q1, cfg.q2)))
    return make_output(cells)


@register_loss(
    name="gpr",
    description="generalised pseudo-label robust loss (AEVLP): GR plus weighted positive/negative "
                "pseudo-labels and an expected-positives regulariser",
    reference="Tran et al., ICCV 2025 (AEVLP); docs/methods.md §3.7",
    cfg_cls=GprCfg,
    dataset_defaults=_GPR_DEFAULTS,
    needs_pseudo=True,
)
def gpr(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: GprCfg,
) -> LossOutput:
    """GPR loss: GR on undefined cells plus weighted terms for positive and negative pseudo-labels.

    The final label is the pseudo-label where the observed one is unknown, else the observed one:
    observed +1 → nlog(p); final 0 → GR's term; final −1 → v·nlog(1−p) (an observed −1 included, as in the
    released code); unknown with pseudo +1 → v4·[q3·nlog(p) + (1−q3)·nlog(1−p)], v4 = clip(1−v, λ1, λ2).
    Regulariser: η·((mean_b Σ_c p) − m)² / C².

    Args:
        logits: [B, C] logits.
        observed: [B, C] `Observed` values.
        pseudo: [B, C] `Pseudo` values (required; all-zero pseudo-labels reduce GPR to GR + regulariser).
        epoch: the current epoch; the schedules of k̂ and v depend on it.
        cfg: `GprCfg`.

    Returns:
        The per-cell terms and the weighted regulariser.
    """
    check_loss_inputs("gpr", logits, observed, pseudo, needs_pseudo=True)
    assert pseudo is not None  # checked above; narrows the type
    x = working_logits(logits)
    p = torch.sigmoid(x)
    k_hat, v = gr_weights(p, gr_schedule(epoch, cfg.beta, cfg.alpha))
    final = torch.where(observed == Observed.UNKNOWN, pseudo.to(observed.dtype), observed)
    v4 = torch.clamp(1 - v, cfg.lambda1, cfg.lambda2)
    positive_pseudo = v4 * (cfg.q3 * nlog(p, EPS) + (1 - cfg.q3) * nlog(1 - p, EPS))
    cells = torch.where(
        observed == Observed.POSITIVE, nlog(p, EPS),
        torch.where(final == Pseudo.NEGATIVE, v * nlog(1 - p, EPS),
                    torch.where(final == Pseudo.POSITIVE, positive_pseudo,
                                _gr_unknown_term(x, k_hat, v, cfg.q1, cfg.q2))))
    return make_output(cells, cfg.eta * expected_positives_regulariser(p, cfg.m))


