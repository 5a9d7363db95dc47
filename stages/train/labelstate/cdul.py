"""CDUL's per-image soft pseudo-labels: initialised from the teacher's global and tile similarities, then
refined by gradient alignment while the network trains on them (docs/methods.md §4.4 "CDUL initialisation", 5).

Paper: Abdelfattah et al., "CDUL: CLIP-Driven Unsupervised Learning for Multi-Label Image Classification",
ICCV 2023. No reference code was released; the reproducibility study of Shah & Bhalgat (2024,
github.com/cs-mshah/CDUL) is the public implementation this module was checked against.

Initialisation (the pure `cdul_scores`): per view, S = softmax over classes of (temperature · cos), with the
teacher's learned temperature (≈ 100 for CLIP); S_g the global view; over the g×g tiles ω = max and
ψ = min per class; S_agg[c] = ω_c if ω_c > ζ else ψ_c; ŷ = (S_g + S_agg)/2 + λ·|S_g − S_agg|/2. The literature's
description (docs/methods.md §4.4) writes the variant's term as λ·|S_g − S_agg| and says λ = 1 gives the element-wise
max; the two cannot both hold ((a + b)/2 + |a − b| = max(a, b) + |a − b|/2), and the max is the variant's stated
purpose, so the term is halved: λ = 0 is the paper's average, λ = 1 the element-wise max.

Gradient alignment (`pseudo_label_step`): with the network fixed, each unknown cell's latent z (ŷ = σ(z))
moves against the gradient of the soft-target BCE the network is trained with,

    ℓ(ŷ, s) = −ŷ·log σ(s) − (1 − ŷ)·log(1 − σ(s)),   ∂ℓ/∂ŷ = log(1 − σ(s)) − log σ(s) = −s,
    z ← z − lr_z · ψ(ŷ) · ∂ℓ/∂ŷ = z + lr_z · ψ(ŷ) · s,   ψ(ŷ) = exp(−(ŷ − 0.5)² / (2σ_ψ²)),

so a label moves toward the side the network's logit s is on, uncertain labels (ŷ ≈ 0.5) most. The gradient
is the cell's own term's (equivalently the gradient of the summed loss: z of one cell enters no other term),
not the batch mean's, whose 1/(B·C) would tie the step to the batch size and the class count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.families import NO_FAMILY_VALUES
from mlpl.stages.train.labelstate import (
    LabelState,
    LabelStateContext,
    RowTable,
    register_label_state,
)
from mlpl.stages.train.losses import EpochState, LossOutput
from mlpl.stages.train.pseudolabels import aggregate_tiles

LABEL_EPS = 1e-6
"""ŷ is kept in [ε, 1 − ε] so that its logit is finite: a softmax at temperature 100 underflows to 0."""
Z_MAX = math.log((1 - LABEL_EPS) / LABEL_EPS)
"""|z| ≤ logit(1 − ε) ≈ 13.8."""

INIT_SEED_INDEX = 0
"""The store's augment seed read for the initial labels (see `CdulState`)."""


@dataclass(frozen=True, kw_only=True)
class CdulCfg:
    """Parameters of CDUL's pseudo-labels.

    Attributes:
        grid: tiles per side g the store must have been built with (`mlpl precompute-clip --grid`); the paper
            splits images into 3×3 snippets.
        temperature: softmax temperature multiplying the cosines; None takes the store's `teacher.logit_scale`
            (the teacher's learned temperature, as the paper does).
        zeta: ζ, the aggregator's threshold: a class whose best tile scores above ζ takes that score, else its
            worst tile's (paper default 0.5; its supplementary sweeps 0–0.4).
        lam: λ ≥ 0 of ŷ = (S_g + S_agg)/2 + λ·|S_g − S_agg|/2 (0: the paper's average; 1: max(S_g, S_agg)).
        local: False drops the tiles ("CDUL without local similarity", the seed paper's Table II): ŷ = S_g,
            and the store may have any grid.
        aggregator: False replaces S_agg by the plain mean of the tiles' S ("without aggregator"): no max/min
            choice, ζ unused; λ still applies.
        update: when the pseudo-label step runs: "step" (after every `period`-th training step, on the batch's
            rows, with the batch's logits) or "epoch" (after every `period`-th epoch, on every training row,
            with eval-mode predictions).
        period: steps (within an epoch, from its first) or epochs between pseudo-label steps.
        warmup_epochs: epochs the network trains on the initial labels before the first pseudo-label step.
        lr_z: step size on the latent z.
        sigma_psi: σ_ψ of the Gaussian weight ψ(ŷ) centred at 0.5.
    """

    grid: int = 3
    temperature: float | None = None
    zeta: float = 0.5
    lam: float = 0.0
    local: bool = True
    aggregator: bool = True
    # Schedule and step size. The paper's Eq. 7 is a step on a mini-batch's labels with the network fixed;
    # its reproducibility study's code takes it after every network step, once 10% of the epochs (10 of 100)
    # have trained on the initial labels: one warm-up epoch of a 10-epoch run.
    # Eq. 7 has no step size and leaves the loss's scale open, so lr_z (on the per-cell gradient −s) is a
    # choice. lr_z = 1 would move an uncertain label (ψ = 1) to the network's prediction in one update (z + s)
    # and add the network's logit again every epoch; the reproducibility code's loss (summed over classes,
    # averaged over its batch of 8) gives 1/8 of the per-cell gradient, times its Gaussian density (0.4 at 0.5
    # for its σ = 1): 0.05–0.125 per cell and update. lr_z = 0.1 is of that order and does not hinge on the
    # batch size. (docs/methods.md's batch-mean reading, ∂/∂ŷ of the mean over B·C cells with step 1, is
    # lr_z = 1/(B·C): VOC 0.006, COCO 0.0008.) Measured on the digits world (1,600 train canvases, seed 0,
    # train-image mAP; initial labels 91.7): after 10 epochs lr_z = 0 / 0.1 / 1 gave labels 91.7 / 91.0 / 82.8
    # and network 82.3 / 78.5 / 58.6; after 30 epochs lr_z = 0 / 0.1: network 95.3 / 90.1.
    update: Literal["step", "epoch"] = "step"
    period: int = 1
    warmup_epochs: int = 1
    lr_z: float = 0.1
    sigma_psi: float = 0.15

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise InputError(f"grid must be >= 1, got {self.grid}")
        if self.temperature is not None and self.temperature <= 0:
            raise InputError(f"temperature must be > 0 (or unset: the store's logit scale), got {self.temperature}")
        if not 0.0 <= self.zeta <= 1.0:
            raise InputError(f"zeta must be in [0, 1], got {self.zeta}")
        if self.lam < 0:
            raise InputError(f"lam must be >= 0, got {self.lam}")
        if self.update not in ("step", "epoch"):
            raise InputError(f"update must be 'step' or 'epoch', got {self.update!r}")
        if self.period < 1:
            raise InputError(f"period must be >= 1, got {self.period}")
        if self.warmup_epochs < 0:
            raise InputError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.lr_z < 0:
            raise InputError(f"lr_z must be >= 0, got {self.lr_z}")
        if self.sigma_psi <= 0:
            raise InputError(f"sigma_psi must be > 0, got {self.sigma_psi}")


@dataclass(frozen=True)
class CdulScores:
    """The initialisation's intermediate scores, each [B, C] (tile ones None with `local=False`)."""

    s_global: torch.Tensor
    tile_max: torch.Tensor | None
    tile_min: torch.Tensor | None
    s_agg: torch.Tensor | None
    labels: torch.Tensor


def cdul_scores(sims: torch.Tensor, *, temperature: float, grid: int, zeta: float = 0.5, lam: float = 0.0,
                local: bool = True, aggregator: bool = True) -> CdulScores:
    """CDUL's initial soft pseudo-labels ŷ from raw cosines (docs/methods.md §4.4), computed in `sims`' precision.

    Args:
        sims: [B, 1 + g², C] raw cosines, view 0 global, then the g×g tiles (with `local=False`, any V >= 1).
        temperature: multiplies the cosines before the softmax over classes.
        grid: g.
        zeta: ζ; ω_c > ζ (strictly, as DAMP's released code compares) takes ω_c, else ψ_c.
        lam: λ of the λ·|S_g − S_agg|/2 term (1: the element-wise max of S_g and S_agg).
        local: False: ŷ = S_g.
        aggregator: False: S_agg = mean over tiles.

    Returns:
        `CdulScores`; `labels` = ŷ in [0, 1] (up to λ > 1, which can exceed 1: the caller clamps).
    """
    if sims.dim() != 3:
        raise ValueError(f"cdul: sims must be [B, V, C], got {tuple(sims.shape)}")
    if local and sims.shape[1] != 1 + grid * grid:
        raise ValueError(f"cdul: sims have {sims.shape[1]} views, a {grid}×{grid} grid needs {1 + grid * grid}")
    if not local:
        s_global = torch.softmax(temperature * sims[:, 0], dim=-1)
        return CdulScores(s_global=s_global, tile_max=None, tile_min=None, s_agg=None, labels=s_global)
    s = torch.softmax(temperature * sims, dim=-1)
    s_global, s_tiles = s[:, 0], s[:, 1:]
    tile_max, tile_min, s_agg = aggregate_tiles(s_tiles, zeta)
    if not aggregator:
        s_agg = s_tiles.mean(dim=1)
    labels = (s_global + s_agg) / 2 + lam * (s_global - s_agg).abs() / 2
    return CdulScores(s_global=s_global, tile_max=tile_max, tile_min=tile_min, s_agg=s_agg, labels=labels)


def gaussian_weight(labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """ψ(ŷ) = exp(−(ŷ − 0.5)² / (2σ²)): 1 at ŷ = 0.5, small for confident labels."""
    return torch.exp(-((labels - 0.5) ** 2) / (2 * sigma * sigma))


def soft_bce_label_gradient(logits: torch.Tensor) -> torch.Tensor:
    """∂ℓ/∂ŷ of one cell's soft-target BCE ℓ = −ŷ·log σ(s) − (1 − ŷ)·log(1 − σ(s)): log(1 − p) − log p = −s."""
    return -logits


def pseudo_label_step(z: torch.Tensor, logits: torch.Tensor, *, lr_z: float, sigma_psi: float) -> torch.Tensor:
    """One gradient-alignment step of the latents: z − lr_z·ψ(σ(z))·∂ℓ/∂ŷ, clamped to ±`Z_MAX`."""
    weight = gaussian_weight(torch.sigmoid(z), sigma_psi)
    return (z - lr_z * weight * soft_bce_label_gradient(logits)).clamp(-Z_MAX, Z_MAX)


def label_logits(labels: torch.Tensor) -> torch.Tensor:
    """logit(ŷ) with ŷ clamped to [ε, 1 − ε] (probabilities from the network or the teacher may be 0 or 1)."""
    return torch.logit(labels, eps=LABEL_EPS)


def resolve_temperature(cfg: CdulCfg, ctx: LabelStateContext) -> float:
    """The configured temperature, else the store's recorded teacher logit scale."""
    if cfg.temperature is not None:
        return cfg.temperature
    teacher = ctx.store_teacher
    if teacher is None or teacher.logit_scale is None:
        dataset = (ctx.store_attrs or {}).get("dataset_name")
        raise InputError(f"label state 'cdul': {ctx.store_where} (dataset {dataset!r}, teacher "
                         f"{teacher.model if teacher else None!r}) records no teacher.logit_scale; rebuild it "
                         "with `mlpl precompute-clip` or set the softmax temperature with "
                         "label_state_params.temperature")
    return teacher.logit_scale


class CdulState(LabelState):
    """CDUL's latents z [N, C] (ŷ = σ(z)), initialised from the store, refined by gradient alignment.

    The initial labels read the store's first augment seed (index 0): CDUL runs the teacher once per image,
    before training, so one set of views is all it uses, and seed 0 exists in every store (it is also what
    `pseudo_mode = "fixed"` reads). A row the teacher could not read (NaN) starts at ŷ = 0.5, the latent's
    "unknown" point, which the pseudo-label step moves fastest. Observed cells (regimes other than `none`)
    start at their observed value and are never updated: `soft-bce` trains them on the observed label.
    """

    def __init__(self, ctx: LabelStateContext, cfg: CdulCfg) -> None:
        super().__init__(ctx, cfg)
        if ctx.read_sims is None or ctx.store_attrs is None:
            raise InputError("label state 'cdul' initialises its labels from a store: build one with "
                             f"`mlpl precompute-clip --grid {cfg.grid}` and pass --pseudo-store")
        store_grid = ctx.store_views.grid
        if cfg.local and store_grid != cfg.grid:
            raise InputError(f"label state 'cdul': {ctx.store_where} has a {store_grid}×{store_grid} grid of "
                             f"tiles, CDUL uses {cfg.grid}×{cfg.grid}; build the store with `mlpl precompute-clip "
                             f"--grid {cfg.grid}` (or set label_state_params.grid = {store_grid})")
        self.temperature = resolve_temperature(cfg, ctx)
        self.unknown = torch.from_numpy(ctx.observed == Observed.UNKNOWN)
        z = np.zeros((ctx.num_rows, ctx.num_classes), dtype=np.float32)
        for rows, sims in ctx.read_sims(INIT_SEED_INDEX):
            z[rows] = self.initial_logits(torch.from_numpy(sims)).numpy()
        z[ctx.observed == Observed.POSITIVE] = Z_MAX
        z[ctx.observed == Observed.NEGATIVE] = -Z_MAX
        # z in float32: a float16 z has a spacing of 2^-7 ≈ 0.008 at |z| ≥ 8, larger than the steps
        # lr_z·ψ(ŷ)·s of confident labels (ψ < 0.01 there), which would round away and stall. The table is
        # memory-bounded all the same: NUS-WIDE's 150,000 × 81 float32 latents are 49 MB.
        self.tables["z"] = RowTable(z, dtype=torch.float32)
        self._step_in_epoch = 0
        self._epoch_start: torch.Tensor | None = None

    def initial_logits(self, sims: torch.Tensor) -> torch.Tensor:
        """logit(ŷ) [n, C] of the initial labels of `sims` [n, V, C] (float64 arithmetic; NaN rows → 0)."""
        work = sims.double()
        unreadable = torch.isnan(work).flatten(1).any(dim=1)
        cfg = self.cfg
        labels = cdul_scores(torch.nan_to_num(work), temperature=self.temperature, grid=cfg.grid, zeta=cfg.zeta,
                             lam=cfg.lam, local=cfg.local, aggregator=cfg.aggregator).labels
        return label_logits(labels).masked_fill(unreadable[:, None], 0.0).float()

    # ------------------------------------------------------------------ hooks
    def batch_state(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        target = torch.sigmoid(self.tables["z"][rows]).to(device)
        return {"target": target, "weight": torch.ones_like(target)}

    def after_step(self, *, rows: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, out: LossOutput,
                   epoch: EpochState) -> None:
        step, self._step_in_epoch = self._step_in_epoch, self._step_in_epoch + 1
        cfg = self.cfg
        if cfg.update != "step" or epoch.epoch <= cfg.warmup_epochs or step % cfg.period:
            return
        self._update(rows, logits.detach().float().cpu())

    def wants_train_predictions(self, epoch: EpochState) -> bool:
        cfg = self.cfg
        # the network has trained `warmup_epochs` epochs (at least one) before the first update; none after the
        # last epoch, which no training would use
        first = max(cfg.warmup_epochs, 1)
        return (cfg.update == "epoch" and first <= epoch.epoch < epoch.num_epochs
                and (epoch.epoch - first) % cfg.period == 0)

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        if probs is not None and rows is not None:
            self._update(torch.as_tensor(rows, dtype=torch.long), label_logits(torch.from_numpy(probs).double()))
        labels = torch.sigmoid(self.tables["z"].data)
        record = {"label_mean": float(labels.mean())}
        if self._epoch_start is not None:
            record["label_change"] = float((labels - self._epoch_start).abs().mean())
        return record

    def labels(self) -> np.ndarray:
        return torch.sigmoid(self.tables["z"].data).numpy()

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self._step_in_epoch = 0
        self._epoch_start = torch.sigmoid(self.tables["z"].data)

    def _update(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        z = self.tables["z"][rows]
        stepped = pseudo_label_step(z, logits.to(z.dtype), lr_z=self.cfg.lr_z, sigma_psi=self.cfg.sigma_psi)
        self.tables["z"][rows] = torch.where(self.unknown[rows], stepped, z)


@register_label_state(
    name="cdul",
    description="CDUL: soft pseudo-labels from the teacher's global and tile views, refined by gradient alignment",
    reference="Abdelfattah et al., CDUL (ICCV 2023); docs/methods.md §4.4, 5",
    cfg_cls=CdulCfg,
    dataset_defaults=NO_FAMILY_VALUES,
    uses_sims=True,
)
def _create(ctx: LabelStateContext, cfg: CdulCfg) -> CdulState:
    return CdulState(ctx, cfg)


# CDUL gives no per-dataset values (it reports VOC, COCO, NUS; CUB and digits take the same): every family uses
# the class defaults above. Digits: the built-in teacher records its own learned logit scale, which becomes the
# temperature as CLIP's does; its tiles see single digits, as CLIP's snippets see single objects.
