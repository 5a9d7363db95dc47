"""MIME's variational-bottleneck term (docs/methods.md §3.9): the KL divergence of the label-query head's
per-class Gaussian posteriors from the standard normal prior.

Paper: Liu, Xu, Lv, Geng, "Revisiting Pseudo-Label for Single-Positive Multi-Label Learning", ICML 2023.
Reference code: github.com/palm-biaoliu/mime (commit 62a0f6616216648cf8973fdbfeb914458f1affcd; `train_mime.py`
at 9000abf1eb10ad5bda4d794b4cf8ee1e35ca4b7e), `utils/losses.py: loss_VIB`.

MIME's loss is AN (the registered `an` loss: `nlog(p)` on observed positives, `nlog(1 − p)` elsewhere, ε = 1e-5,
mean over the batch's B·C cells, exactly as the reference's `loss_VIB` computes its cell terms) plus
β · KL(N(μ, σ²) ‖ N(0, 1)). The KL term belongs to the `mime` head (`mlpl.stages.train.heads.mime`), which owns
μ, σ and β: every method trained with `--head mime` gets it, not only `--method mime`. This module holds the
term as a pure function so that it is tested on fixed tensors like every other loss term.
"""

from __future__ import annotations

import torch


def gaussian_kl(*, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per element, averaged over every element (the reference's reduction).

    `−½ · mean(1 + 2·log σ − μ² − σ²)`: the reference averages over batch, classes and latent dimensions alike
    (not a sum over latent dimensions), which is what its β = 1e-4 was chosen against.

    Args:
        mu: posterior means, any shape ([B, C, z] in the head).
        std: posterior standard deviations (> 0), the shape of `mu`.

    Returns:
        A scalar tensor (unweighted; the head multiplies it by its `kl_weight` β).
    """
    if mu.shape != std.shape:
        raise ValueError(f"gaussian_kl: mu {tuple(mu.shape)} and std {tuple(std.shape)} differ")
    return -0.5 * (1 + 2 * torch.log(std) - mu.pow(2) - std.pow(2)).mean()
