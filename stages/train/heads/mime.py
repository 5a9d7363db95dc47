"""Head `mime`: MIME's label-query transformer with a variational bottleneck (docs/methods.md §3.9).

Paper: Liu, Xu, Lv, Geng, "Revisiting Pseudo-Label for Single-Positive Multi-Label Learning", ICML 2023.
Reference code: github.com/palm-biaoliu/mime (commit 62a0f6616216648cf8973fdbfeb914458f1affcd),
`lib_lagc/models/LEModel.py: LEModel_VIB` and `train_mime.py` (commit 9000abf1eb10ad5bda4d794b4cf8ee1e35ca4b7e).

The backbone's last feature map [B, D, h, w] (no input projection: the reference replaces it by the identity,
so the transformer's width is D) gets a fixed 2-D sine position embedding; a transformer encoder runs over the
h·w positions and a decoder lets one learned query per class attend to them. From each class's output token an
MLP (Linear(D, D), ReLU, Linear(D, 2·z)) gives a Gaussian posterior: μ the first z values, σ = exp(clamp(h/2,
−6, 6)) from the others. In training, z is the mean of `samples` reparameterised draws of N(μ, σ²) and the head
adds β·KL(N(μ, σ²) ‖ N(0, 1)) (`mlpl.stages.train.losses.mime.gaussian_kl`, averaged over every element) to the
loss of whatever method it is trained with; a per-class linear map (weights [C, z], bias [C], uniform in
±1/√z as the reference's `GroupWiseLinear`) gives the logits.

The transformer module of the reference (`lib_lagc/models/encoder.py`) is published only as compiled files,
so its sizes are not readable there; its interface (`encoder(src, query, pos)`, output [layers, B, C, D]) is
Query2Label's (Liu et al. 2021), whose published configuration this head follows: 1 encoder layer, 2 decoder
layers whose queries skip self-attention (Query2Label's default), 4 attention heads, post-norm layers with
dropout 0.1, feed-forward width 4·D (8192 on ResNet-50, Query2Label's ResNet setting), positions added to
queries and keys but not values, decoder queries starting at zero with the class embeddings as their
positions, a final LayerNorm, Xavier-uniform initialisation of the transformer's matrices (DETR's).

Differences from the reference:
- In evaluation z = μ, the posterior mean, instead of a fresh mean of 10 draws: predictions are deterministic
  (the same on every rank and in every export), and the mean of 10 draws estimates μ anyway.
- The sizes above where the reference's transformer cannot be read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.families import HYPERPARAMETER_FAMILIES
from mlpl.stages.train.backbones import MAP_BACKBONES
from mlpl.stages.train.losses.mime import gaussian_kl
from mlpl.stages.train.models import HeadOutput, register_head
from torch import nn


@dataclass(frozen=True, kw_only=True)
class MimeHeadCfg:
    """Hyperparameters of the `mime` head (the reference's names in brackets).

    Attributes:
        z_dim: latent dimensions per class [z_dim, 256].
        kl_weight: β, the weight of the KL term [beta, 1e-4].
        samples: reparameterised draws averaged in training [sample count 10 in LEModel_VIB].
        heads: attention heads (must divide the backbone's feature width D).
        encoder_layers: transformer encoder layers over the map's positions.
        decoder_layers: decoder layers of the class queries.
        feedforward_ratio: feed-forward width as a multiple of D.
        dropout: dropout in the transformer layers.
    """

    z_dim: int = 256
    kl_weight: float = 1e-4
    samples: int = 10
    heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 2
    feedforward_ratio: float = 4.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("z_dim", "samples", "heads", "decoder_layers"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_layers < 0:
            raise InputError(f"encoder_layers must be >= 0, got {self.encoder_layers}")
        if self.kl_weight < 0:
            raise InputError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if not self.feedforward_ratio > 0:
            raise InputError(f"feedforward_ratio must be > 0, got {self.feedforward_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")


def sine_position_embedding(height: int, width: int, dim: int, device: torch.device | None = None,
                            temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine embedding [h·w, dim] (row-major positions): the first dim/2 channels encode
    the row, the others the column, each as interleaved sin/cos of (position / extent · 2π) / T^(2⌊i/2⌋/(dim/2))."""
    half = dim // 2
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * 2 * math.pi
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] / freq  # [n, half]
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    row_embed = embed(rows)[:, None, :].expand(height, width, half)
    col_embed = embed(cols)[None, :, :].expand(height, width, half)
    return torch.cat((row_embed, col_embed), dim=2).reshape(height * width, dim)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Post-norm self-attention over positions; positions added to queries and keys only."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.drop1(self.attn(qk, qk, src, need_weights=False)[0]))
        return self.norm2(src + self.drop2(self.ffn(src)))


class DecoderLayer(EncoderLayer):
    """Post-norm cross-attention of the class queries to the positions (no query self-attention); the same
    parts as `EncoderLayer`, attending from the queries instead of from the positions."""

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        attended = self.attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm1(tgt + self.drop1(attended))
        return self.norm2(tgt + self.drop2(self.ffn(tgt)))


@register_head(
    name="mime",
    description="MIME: class queries attend over the feature map (transformer), a Gaussian bottleneck with a KL "
                "term, per-class linear logits",
    reference="Liu et al., ICML 2023 (MIME); docs/methods.md §3.9",
    cfg_cls=MimeHeadCfg,
    # the reference uses z = 256 and β = 1e-4 for every dataset (train_mime.py); digits keeps them
    dataset_defaults={name: {"z_dim": 256, "kl_weight": 1e-4} for name in HYPERPARAMETER_FAMILIES},
)
class MimeHead(nn.Module):
    """Label queries over the feature map → per-class Gaussian bottleneck → per-class linear logits."""

    def __init__(self, feat_dim: int, num_classes: int, cfg: MimeHeadCfg) -> None:
        super().__init__()
        if feat_dim % 2 or feat_dim % cfg.heads:
            raise InputError(f"--head mime: the backbone's feature width {feat_dim} must be even and divisible by "
                             f"heads = {cfg.heads} (set head_params heads to a divisor)")
        self.cfg = cfg
        hidden = max(1, round(cfg.feedforward_ratio * feat_dim))
        self.encoder = nn.ModuleList(EncoderLayer(feat_dim, cfg.heads, hidden, cfg.dropout)
                                     for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(feat_dim, cfg.heads, hidden, cfg.dropout)
                                     for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(feat_dim)
        for param in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        self.query_embed = nn.Embedding(num_classes, feat_dim)
        self.proj = nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.ReLU(inplace=True),
                                  nn.Linear(feat_dim, 2 * cfg.z_dim))
        bound = 1.0 / math.sqrt(cfg.z_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, cfg.z_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def posterior(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ), each [B, C, z], of the classes' latent codes for a feature map [B, D, h, w]."""
        if feature_map.dim() != 4:
            supported = "; ".join(MAP_BACKBONES)
            raise InputError(f"--head mime: needs the backbone's spatial feature map [B, D, h, w], got shape "
                             f"{tuple(feature_map.shape)}. Backbones with a feature map: {supported}")
        batch, dim, height, width = feature_map.shape
        memory = feature_map.flatten(2).transpose(1, 2)  # [B, h·w, D]
        pos = sine_position_embedding(height, width, dim, feature_map.device).to(memory.dtype)[None]
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        tokens = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tokens = layer(tokens, query_pos, memory, pos)
        stats = self.proj(self.decoder_norm(tokens))
        mu, log_scale = stats[..., :self.cfg.z_dim], stats[..., self.cfg.z_dim:]
        return mu, torch.exp(torch.clamp(log_scale / 2, min=-6, max=6))

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of latent codes [B, C, z]: one linear map per class."""
        return (z * self.weight).sum(-1) + self.bias

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Logits from the posterior means (evaluation and export)."""
        mu, _ = self.posterior(feature_map)
        return self.classify(mu)

    def forward_train(self, feature_map: torch.Tensor) -> HeadOutput:
        """Logits from the mean of `samples` reparameterised draws, and β·KL as the head's regulariser."""
        mu, std = self.posterior(feature_map)
        noise = torch.randn((self.cfg.samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = (mu + std * noise).mean(dim=0)
        regulariser = self.cfg.kl_weight * gaussian_kl(mu=mu.float(), std=std.float())
        return HeadOutput(logits=self.classify(z), regulariser=regulariser)
