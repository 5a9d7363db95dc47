"""Text-embedding noise G(·) of docs/methods.md §4.2: a frozen, seeded, never-trained 3-layer GCN over classes.

The noised class embedding is normalise(t + G(t)). The adjacency comes from the cosine similarities
of the class text embeddings: keep the top-k entries per row, zero the diagonal, row-normalise,
scale by 0.2 and set the diagonal to 0.8. Weights (no bias) D→1024→1024→D are drawn U(±1/√out)
from a generator seeded by `seed`, so the noise is a recorded stage-one parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from mlpl.schemas.errors import InputError


@dataclass(frozen=True)
class TextNoiseCfg:
    """Settings of G(·); all recorded in the store.

    Attributes:
        topk: entries kept per adjacency row (before zeroing the diagonal).
        seed: seed of the weight draw.
        hidden: width of the two hidden layers.
        neighbour_scale: scale of the row-normalised off-diagonal part (0.2).
        self_weight: diagonal of the adjacency (0.8).
        slope: negative slope of the LeakyReLU (0.2).
    """

    topk: int
    seed: int = 0
    hidden: int = 1024
    neighbour_scale: float = 0.2
    self_weight: float = 0.8
    slope: float = 0.2

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise InputError(f"--noise-topk must be ≥ 1, got {self.topk}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_adjacency(text_emb: torch.Tensor, cfg: TextNoiseCfg) -> torch.Tensor:
    """The fixed adjacency A [C, C] from normalised class embeddings (float64)."""
    t = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    sim = t @ t.T
    k = min(cfg.topk, sim.shape[0])
    top = torch.topk(sim, k, dim=1).indices
    adj = torch.zeros_like(sim).scatter_(1, top, sim.gather(1, top))
    adj.fill_diagonal_(0.0)
    row_sum = adj.sum(dim=1, keepdim=True)
    adj = torch.where(row_sum > 0, adj / row_sum.clamp_min(1e-12), adj) * cfg.neighbour_scale
    adj.fill_diagonal_(cfg.self_weight)
    return adj


def _uniform(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    bound = 1.0 / cols**0.5
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * bound


def apply_text_noise(text_emb: torch.Tensor, cfg: TextNoiseCfg) -> torch.Tensor:
    """normalise(t + G(t)) for normalised class embeddings t [C, D]; float32 on t's device.

    Computed in float64 on the CPU so that the noised embeddings are the same on every machine.
    """
    t = torch.nn.functional.normalize(text_emb.detach().cpu().double(), dim=-1)
    dim = t.shape[1]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    w1, w2, w3 = _uniform(gen, dim, cfg.hidden), _uniform(gen, cfg.hidden, cfg.hidden), _uniform(gen, cfg.hidden, dim)
    adj = noise_adjacency(t, cfg)
    act = torch.nn.functional.leaky_relu
    h = act(adj @ t @ w1, cfg.slope)
    h = act(adj @ h @ w2, cfg.slope)
    g = adj @ h @ w3
    return torch.nn.functional.normalize(t + g, dim=-1).float().to(text_emb.device)
