"""`ll-ct` pseudo-labels: the cells LL-Ct would correct in this batch and epoch become positives (docs/methods.md §4.4).

Papers: Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification", CVPR 2022 (LL-Ct);
Tran et al., ICCV 2025, Table 2 (GPR+LL-Ct: LL-Ct's corrections fed to GPR as positive pseudo-labels).

The rule reads the network's logits of the batch, not the teacher's similarities: an unknown cell is +1 when
its assume-negative loss is among the batch's largest, with LL-Ct's schedule (none in epoch 1, a share of
Δ per cent of the cells more every epoch). The selection is the loss's own (`large_loss_selection`).
"""

from __future__ import annotations

import torch
from mlpl.schemas.labels import Pseudo
from mlpl.stages.train.losses import EpochState
from mlpl.stages.train.losses.large_loss import LL_CT_DEFAULTS, LargeLossCfg, large_loss_selection
from mlpl.stages.train.pseudolabels import register_pseudolabeller


@register_pseudolabeller(
    name="ll-ct",
    description="LL-Ct corrections: positives where the network's assume-negative loss on an unknown label "
                "is among the batch's largest",
    reference="Kim et al., CVPR 2022 (LL-Ct); Tran et al., ICCV 2025, Table 2 (GPR+LL-Ct); docs/methods.md §4.4",
    cfg_cls=LargeLossCfg,
    dataset_defaults=LL_CT_DEFAULTS,
    uses_sims=False,
    needs_logits=True,
)
def ll_ct_positives(
    *,
    sims: torch.Tensor | None,
    observed: torch.Tensor,
    cfg: LargeLossCfg,
    generator: torch.Generator | None = None,
    logits: torch.Tensor,
    epoch: EpochState,
) -> torch.Tensor:
    """+1 on the unknown cells LL-Ct corrects for this batch and epoch, 0 elsewhere (no negatives).

    Args:
        sims: not read (the rule uses no teacher; an unreadable image has no effect on it).
        observed: [B, C] `Observed` values; only unknown (0) cells can become positive.
        cfg: `LargeLossCfg` (Δ in per cent of the batch's cells; LL-Ct's by default).
        generator: unused (deterministic).
        logits: [B, C] the network's logits of the batch (detached).
        epoch: the current epoch (epoch 1 gives no positives).

    Returns:
        [B, C] int8 of +1/0 on `observed`'s device.
    """
    if logits.shape != observed.shape:
        raise ValueError(f"pseudo-labeller 'll-ct': logits shape {tuple(logits.shape)} != observed "
                         f"{tuple(observed.shape)}")
    selected = large_loss_selection(logits.to(observed.device), observed, epoch, cfg.delta, cumulative=True)
    return torch.where(selected, int(Pseudo.POSITIVE), int(Pseudo.UNDEFINED)).to(torch.int8)


