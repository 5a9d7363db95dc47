"""SMILE's loss (docs/methods.md §3.9): label enhancement by variational inference over label distributions,
and the classifier trained against the enhanced labels.

Paper: Xu et al., "One Positive Label is Sufficient: Single-Positive Multi-Label Learning
with Label Enhancement", NeurIPS 2022. Reference code: github.com/palm-ml/smile (commit
49405dbc8b07479a26ebad0c8984f419b6102010, `train_smile2.py`, the script its README runs; helpers at
502c4b3e49923b53cfdd98fedc38f8e7910f89a9), written for tabular features.

Per batch, with ŷ = σ(s) the classifier's scores and d = σ(e) the enhancement network's label distribution
(both from the `smile` head, `mlpl.stages.train.heads.smile`; nlog(x) = −log(x + 1e-5) as in the reference):

    prior  = 1 on observed positives, p on unknown cells (0 on observed negatives)
    D      = stopgrad(μ·d + (1 − μ)·prior)                               the enhanced labels
    cls    = D·nlog(ŷ) + (1 − D)·nlog(1 − ŷ) per cell; unknown cells × `rate`, or ÷ (C − 1) with `bias`
    enh    = AN(d) + γ·(MSE(x̂, x) + AN(ŷ_rec) + MSE(ŷ_rec·ŷ_recᵀ, A)) + δ·KL_Beta(d)

`cls` gives the per-cell terms (mean over B·C), `enh` the regulariser, so `total = cls.mean() + enh`. The two
parts reach disjoint parameters (D is detached; the head feeds the enhancement networks detached features),
so one backward pass and one optimiser give the reference's two optimisers' updates (Adam is per-parameter;
the head gives the enhancement networks their own learning rate). In the first `warm_up` epochs both the
classifier and the enhancement network are trained with AN only (the reference's `--warm_up`, 0 by default).

The ELBO's terms as the reference computes them: AN(d) is the likelihood of the observed labels under d;
x̂ = decoder(d, h) with h = encoder_z(x, d) reconstructs the features; ŷ_rec ~ Beta(d + 1e-5, 1 − d + 1e-5)
(a reparameterised draw) reconstructs the labels, and its outer product the batch's feature graph A (each
row's k = 3 nearest neighbours by Euclidean distance, no self-loops, as `gen_adj.py` builds it); KL_Beta is the
divergence of the posterior Beta(d, 1 − d) from the uniform prior Beta(1, 1).

Differences from the reference, and choices where it and the paper are silent for images:
- Features are the backbone's pooled features of the batch's images, and A is the k-nearest-neighbour graph
  *within the batch*: the reference's graph is built once over the whole tabular training set, which a
  streamed image dataset whose features change every step does not have. (The reference then reads the batch's
  block of that global graph, which is mostly empty; the in-batch graph is its image analogue.)
- `beta_kl = "reference"` (the default) computes the reference's `beta_kl_loss`:
  mean(lgamma(a) + lgamma(b) + (a − 1)·ψ(a) + (b − 1)·ψ(b)) with a = d + 1e-6, b = 1 − d + 1e-6. The divergence
  KL(Beta(a, b) ‖ Beta(1, 1)) has −lgamma(a) − lgamma(b) + lgamma(a + b) − (a + b − 2)·ψ(a + b) there instead;
  `beta_kl = "exact"` computes it. The published numbers come from the former.
- Observed negatives (partial-label regimes; the reference asserts there are none) get prior 0, the classifier
  term of a labelled cell (not scaled), and AN's negative term.
- The reference's temperature T (default 1) is not an option: σ(s/T) with T = 1 throughout.
- Per-family values (the paper's experiments are tabular; its README gives p, μ and rate/bias per tabular
  dataset, from p = 0.001 to 0.1): p is the expected share of hidden positives among unknown cells,
  (m − 1)/(C − 1) with docs/methods.md §1.1's m; μ = 0.5, γ = 0.001 and δ = 1 are the reference's defaults;
  `bias` (÷ (C − 1)) for CUB, whose 312 classes are in the range where the README turns it on (≥ 153 labels),
  `rate = 1` elsewhere (AN's weighting of unknown cells, which the image literature's baselines share).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.families import HYPERPARAMETER_FAMILIES, get_family_info
from mlpl.stages.train.losses import (
    EpochState,
    LossOutput,
    check_loss_inputs,
    make_output,
    nlog,
    register_loss,
    working_logits,
)

EPS = 1e-5  # the reference's LOG_EPSILON
BETA_EPS = 1e-6  # the reference's beta_kl_loss eps

SMILE_HEAD_OUTPUTS = ("label_logits", "features", "rec_features", "rec_labels")


@dataclass(frozen=True, kw_only=True)
class SmileCfg:
    """Hyperparameters of SMILE (the reference's command-line names in brackets).

    Attributes:
        p: prior label value of an unknown cell, in [0, 1] [--p].
        mu: weight of the enhancement network's distribution in the enhanced labels, in [0, 1] [--mu].
        gamma: weight of the three reconstruction terms, >= 0 [--gamma].
        delta: weight of the Beta KL term, >= 0 [--delta].
        rate: factor on unknown cells' classifier terms when `bias` is off, > 0 [--rate].
        bias: divide unknown cells' classifier terms by C − 1 instead of multiplying by `rate` [--bias].
        knn: neighbours per image in the batch's feature graph, >= 1 (gen_adj's k = 3).
        warm_up: epochs of AN for classifier and enhancement network before SMILE's terms, >= 0 [--warm_up].
        beta_kl: "reference" (the reference's expression) or "exact" (the divergence); see the module docstring.
    """

    p: float
    mu: float = 0.5
    gamma: float = 0.001
    delta: float = 1.0
    rate: float = 1.0
    bias: bool = False
    knn: int = 3
    warm_up: int = 0
    beta_kl: Literal["reference", "exact"] = "reference"

    def __post_init__(self) -> None:
        for name in ("p", "mu"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("gamma", "delta"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.rate > 0:
            raise InputError(f"rate must be > 0, got {self.rate}")
        if self.knn < 1:
            raise InputError(f"knn must be >= 1, got {self.knn}")
        if self.warm_up < 0:
            raise InputError(f"warm_up must be >= 0 epochs, got {self.warm_up}")
        if self.beta_kl not in ("reference", "exact"):
            raise InputError(f"beta_kl must be 'reference' or 'exact', got {self.beta_kl!r}")


def assume_negative_mean(scores: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The reference's `loss_an` on probabilities: nlog(x) on observed positives, nlog(1 − x) elsewhere, mean."""
    return torch.where(observed == Observed.POSITIVE, nlog(scores, EPS), nlog(1 - scores, EPS)).mean()


def knn_adjacency(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, B] float 0/1: row i marks the k rows nearest to row i by Euclidean distance (never i itself).

    k is capped at B − 1; ties go to the lower index (the reference's repeated argmin).
    """
    num = features.shape[0]
    k = min(k, num - 1)
    adjacency = features.new_zeros((num, num))
    if k <= 0:
        return adjacency
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    nearest = torch.topk(distances, k, dim=1, largest=False, sorted=True).indices
    return adjacency.scatter_(1, nearest, 1.0)


def beta_kl(distribution: torch.Tensor, form: str) -> torch.Tensor:
    """Mean over cells of the KL term of the posterior Beta(d, 1 − d) against Beta(1, 1) (see the module docstring).

    Args:
        distribution: d in [0, 1], any shape.
        form: "reference" (the reference's `beta_kl_loss`) or "exact" (the divergence).
    """
    a = distribution + BETA_EPS
    b = 1 - distribution + BETA_EPS
    digamma_terms = (a - 1) * torch.digamma(a) + (b - 1) * torch.digamma(b)
    if form == "reference":
        return (torch.lgamma(a) + torch.lgamma(b) + digamma_terms).mean()
    total = a + b
    return (torch.lgamma(total) - torch.lgamma(a) - torch.lgamma(b) + digamma_terms
            - (total - 2) * torch.digamma(total)).mean()


def enhanced_labels(distribution: torch.Tensor, observed: torch.Tensor, cfg: SmileCfg) -> torch.Tensor:
    """D = μ·d + (1 − μ)·prior, detached (the classifier's soft targets)."""
    prior = torch.where(observed == Observed.POSITIVE, torch.ones_like(distribution),
                        torch.where(observed == Observed.UNKNOWN, torch.full_like(distribution, cfg.p),
                                    torch.zeros_like(distribution)))
    return (cfg.mu * distribution + (1 - cfg.mu) * prior).detach()


def _smile_defaults() -> dict[str, dict]:
    # p = (m − 1)/(C − 1): the expected share of hidden positives among a single-positive image's unknown cells
    families = [get_family_info(name) for name in HYPERPARAMETER_FAMILIES]
    defaults = {f.name: {"p": round((f.expected_positives - 1) / (f.num_classes - 1), 4)} for f in families}
    defaults["cub"]["bias"] = True
    return defaults


@register_loss(
    name="smile",
    description="SMILE: a classifier trained on labels enhanced by a variational label-distribution network",
    reference="Xu et al., NeurIPS 2022 (SMILE); docs/methods.md §3.9",
    cfg_cls=SmileCfg,
    dataset_defaults=_smile_defaults(),
    needs_pseudo=False,
    head_outputs=SMILE_HEAD_OUTPUTS,
)
def smile(
    *,
    logits: torch.Tensor,
    observed: torch.Tensor,
    pseudo: torch.Tensor | None,
    epoch: EpochState,
    cfg: SmileCfg,
    head: dict[str, torch.Tensor],
) -> LossOutput:
    """SMILE: the classifier against the enhanced labels, plus the enhancement network's ELBO terms.

    Args:
        logits: [B, C] classifier logits.
        observed: [B, C] `Observed` values.
        pseudo: ignored.
        epoch: the current epoch (AN for both parts while `epoch.epoch <= cfg.warm_up`).
        cfg: `SmileCfg`.
        head: the `smile` head's training outputs: `label_logits` [B, C] (e), `features` [B, D] (x, detached),
            `rec_features` [B, D] (x̂), `rec_labels` [B, C] (ŷ_rec, in (0, 1)).

    Returns:
        The classifier's per-cell terms and, as the regulariser, the enhancement network's loss; `aux` holds
        `enhanced` [B, C] (D; AN's 0/1 targets during warm-up).
    """
    check_loss_inputs("smile", logits, observed, pseudo, needs_pseudo=False)
    scores = torch.sigmoid(working_logits(logits))
    distribution = torch.sigmoid(working_logits(head["label_logits"]))
    likelihood = assume_negative_mean(distribution, observed)
    if epoch.epoch <= cfg.warm_up:
        cells = torch.where(observed == Observed.POSITIVE, nlog(scores, EPS), nlog(1 - scores, EPS))
        target = (observed == Observed.POSITIVE).to(scores.dtype)
        return make_output(cells, likelihood, aux={"enhanced": target})
    target = enhanced_labels(distribution, observed, cfg)
    cells = target * nlog(scores, EPS) + (1 - target) * nlog(1 - scores, EPS)
    scale = 1.0 / (logits.shape[1] - 1) if cfg.bias else cfg.rate
    cells = torch.where(observed == Observed.UNKNOWN, cells * scale, cells)
    features = working_logits(head["features"]).detach()
    rec_labels = working_logits(head["rec_labels"])
    graph = knn_adjacency(features, cfg.knn)
    reconstruction = (F.mse_loss(working_logits(head["rec_features"]), features)
                      + assume_negative_mean(rec_labels, observed)
                      + F.mse_loss(rec_labels @ rec_labels.T, graph))
    enhancement = likelihood + cfg.gamma * reconstruction + cfg.delta * beta_kl(distribution, cfg.beta_kl)
    return make_output(cells, enhancement, aux={"enhanced": target})


