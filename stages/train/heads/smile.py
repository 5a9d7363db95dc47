"""Head `smile`: the linear classifier plus SMILE's label-enhancement networks on the pooled features
(docs/methods.md §3.9).

Paper: Xu et al., "One Positive Label is Sufficient: Single-Positive Multi-Label Learning with Label
Enhancement", NeurIPS 2022. Reference code: github.com/palm-ml/smile (commit
49405dbc8b07479a26ebad0c8984f419b6102010, `train_smile2.py`; models in `spl_models.py` at
502c4b3e49923b53cfdd98fedc38f8e7910f89a9), written for tabular features x.

Here x is the backbone's globally pooled feature vector [B, D], *detached* for the enhancement networks: in the
reference x is fixed input data that only the classifier's loss trains on, and keeping the enhancement loss out
of the backbone keeps that separation. Logits are `Linear(D, C)` of the pooled features (the `linear` head).
The enhancement networks, with the reference's widths (C hidden units):

    e     = Linear(C, C)(Linear(C, C)(ReLU(Linear(D, C)(x))))     label logits; d = σ(e)
    h     = Linear(C, C)(ReLU(Linear(D + C, C)([x, d])))           latent code (`encoder_z`)
    x̂     = Linear(D, D)(ReLU(Linear(2C, D)([d, h])))              feature reconstruction (`decoder`)
    ŷ_rec ~ Beta(d + 1e-5, 1 − d + 1e-5)                           label reconstruction (reparameterised draw)

The reference's label-enhancement encoder is a two-layer graph convolution over a k-nearest-neighbour graph of
the whole training set followed by a linear layer; a streamed image set has no such fixed graph, so the same
layers run as an MLP on each image's features (the graph enters the loss through the batch's feature graph,
`mlpl.stages.train.losses.smile`). In training the head gives the loss `label_logits` (e), `features` (x,
detached), `rec_features` (x̂) and `rec_labels` (ŷ_rec).

The reference trains the enhancement networks with their own Adam at lr 1e-3; `enhancement_lr_mult` sets their
rate relative to the head's (digits: 1, lr 1e-3; the real families: 100, the classifier's 1e-5 → 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.train.losses.smile import SMILE_HEAD_OUTPUTS
from mlpl.stages.train.models import HeadOutput, register_head
from torch import nn

BETA_EPS = 1e-5  # the reference decoder's Beta(d + 1e-5, 1 − d + 1e-5)


@dataclass(frozen=True, kw_only=True)
class SmileHeadCfg:
    """Hyperparameters of the `smile` head.

    Attributes:
        enhancement_lr_mult: learning rate of the enhancement networks as a multiple of the head's.
    """

    enhancement_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if not self.enhancement_lr_mult > 0:
            raise InputError(f"enhancement_lr_mult must be > 0, got {self.enhancement_lr_mult}")


@register_head(
    name="smile",
    description="SMILE: linear classifier on pooled features plus the label-enhancement networks its loss trains",
    reference="Xu et al., NeurIPS 2022 (SMILE); docs/methods.md §3.9",
    cfg_cls=SmileHeadCfg,
    # the reference's 1e-3 for the enhancement networks: the real families' classifiers train at 1e-5
    dataset_defaults={**{name: {"enhancement_lr_mult": 100.0} for name in ("voc", "coco", "nus", "cub")},
                      "digits": {"enhancement_lr_mult": 1.0}},
    outputs=SMILE_HEAD_OUTPUTS,

)
class SmileHead(nn.Module):
    """Pooled features → linear logits; in training also SMILE's enhancement networks' outputs."""

    def __init__(self, feat_dim: int, num_classes: int, cfg: SmileHeadCfg) -> None:
        super().__init__()
        self.cfg = cfg
        c = num_classes
        self.classifier = nn.Linear(feat_dim, c)
        self.enhancer = nn.Sequential(nn.Linear(feat_dim, c), nn.ReLU(), nn.Linear(c, c), nn.Linear(c, c))
        self.latent = nn.Sequential(nn.Linear(feat_dim + c, c), nn.ReLU(), nn.Linear(c, c))
        self.decoder = nn.Sequential(nn.Linear(2 * c, feat_dim), nn.ReLU(), nn.Linear(feat_dim, feat_dim))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(feature_map.mean(dim=(2, 3)))

    def forward_train(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        features = pooled.detach()
        label_logits = self.enhancer(features)
        distribution = torch.sigmoid(label_logits)
        latent = self.latent(torch.cat((features, distribution), dim=1))
        rec_features = self.decoder(torch.cat((distribution, latent), dim=1))
        rec_labels = torch.distributions.Beta(distribution.float() + BETA_EPS,
                                              1 - distribution.float() + BETA_EPS).rsample()
        aux = dict(zip(SMILE_HEAD_OUTPUTS, (label_logits, features, rec_features, rec_labels), strict=True))
        return HeadOutput(logits=self.classifier(pooled), aux=aux)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The classifier at the head's `lr`, the enhancement networks at `lr · enhancement_lr_mult`."""
        enhancement = [*self.enhancer.parameters(), *self.latent.parameters(), *self.decoder.parameters()]
        return [{"params": list(self.classifier.parameters()), "lr": lr},
                {"params": enhancement, "lr": lr * self.cfg.enhancement_lr_mult}]


