"""The public Python API of mlpl, for users who embed it: losses, pseudo-labellers, metrics, runs.

Everything here is importable as `mlpl.<name>` (`mlpl/__init__` re-exports it lazily, so `import mlpl` loads
neither torch nor any stage). Names are looked up in the same registries the command line uses; an unknown
name fails with the list of known ones.

    import mlpl
    loss = mlpl.create_loss("an", family="coco")          # a configured, callable loss
    out = loss(logits=logits, observed=observed)          # LossOutput: .total, .cells, .regulariser
    labeller = mlpl.create_pseudolabeller("damp", family="coco", tau=0.02)
    mlpl.evaluate(scores, targets)                        # {"map": ..., "cf1": ..., ...}
    record = mlpl.read_run("runs/coco-aevlp-0")           # summary, resolved config, metrics
    model = mlpl.load("runs/coco-aevlp-0")                # a predictor: model.predict(images)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlpl.stages.deploy.model import LoadedRun
    from mlpl.stages.evaluate.runs import RunRecord
    from mlpl.stages.train.losses import EpochState, LossInfo, LossOutput
    from mlpl.stages.train.pseudolabels import PseudoLabellerInfo


@dataclass(frozen=True)
class Loss:
    """A registered loss bound to its resolved config: call it with tensors.

    Attributes:
        info: the registry entry (name, description, reference, what it needs).
        cfg: its frozen config (family defaults, then your overrides).
    """

    info: LossInfo
    cfg: Any

    def __call__(self, *, logits: torch.Tensor, observed: torch.Tensor, pseudo: torch.Tensor | None = None,
                 epoch: EpochState | None = None, **extra: Any) -> LossOutput:
        """The loss of a batch (docs/methods.md §3): `logits` float [B, C], `observed` int [B, C] in {+1, 0, −1},
        `pseudo` int [B, C] or None, `epoch` the training position (default: epoch 1 of 1)."""
        from mlpl.stages.train.losses import EpochState

        return self.info.fn(logits=logits, observed=observed, pseudo=pseudo, epoch=epoch or EpochState(1, 1),
                            cfg=self.cfg, **extra)


@dataclass(frozen=True)
class PseudoLabeller:
    """A registered pseudo-labeller bound to its resolved config: call it with the teacher's similarities.

    Attributes:
        info: the registry entry.
        cfg: its frozen config.
    """

    info: PseudoLabellerInfo
    cfg: Any

    def __call__(self, *, sims: torch.Tensor | None, observed: torch.Tensor,
                 generator: torch.Generator | None = None, **extra: Any) -> torch.Tensor:
        """Pseudo-labels int8 [B, C] in {+1, 0, −1} from similarities [B, V, C] (docs/methods.md §4)."""
        import torch

        return self.info.fn(sims=sims, observed=observed, cfg=self.cfg,
                            generator=generator if generator is not None else torch.Generator().manual_seed(0),
                            **extra)


def list_losses(pattern: str = "*") -> list[str]:
    """Names of the registered losses matching a shell-style pattern (`ll-*`)."""
    from mlpl.stages.train.losses import LOSSES

    return LOSSES.names(pattern)


def create_loss(name: str, family: str | None = "coco", **params: Any) -> Loss:
    """The loss `name` with the hyperparameters of dataset `family` (stages/families.py), then `params`.

    Raises:
        InputError: unknown loss or family, unknown parameter, or a value of the wrong type or range.
    """
    from mlpl.stages.train.losses import create_loss_cfg, get_loss_info

    return Loss(get_loss_info(name), create_loss_cfg(name, family, params))


def list_pseudolabellers(pattern: str = "*") -> list[str]:
    """Names of the registered pseudo-labellers matching a shell-style pattern."""
    from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS

    return PSEUDOLABELLERS.names(pattern)


def create_pseudolabeller(name: str, family: str | None = "coco", **params: Any) -> PseudoLabeller:
    """The pseudo-labeller `name` with the hyperparameters of dataset `family`, then `params`."""
    from mlpl.stages.train.pseudolabels import create_pseudo_cfg, get_pseudolabeller_info

    return PseudoLabeller(get_pseudolabeller_info(name), create_pseudo_cfg(name, family, params))


def list_families() -> list[str]:
    """The dataset families whose per-family hyperparameters the `family` arguments take."""
    from mlpl.stages.families import list_families as names

    return names()


def evaluate(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of docs/methods.md §2 (mAP, CF1, OF1, macro F1, Hamming loss, ...) of scores [n, C] against
    full labels [n, C] in {0, 1}, F1 and Hamming at `threshold`."""
    from mlpl.stages.evaluate.metrics import evaluate_scores

    return {k: float(v) for k, v in evaluate_scores(scores, targets, threshold=threshold).items()}


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP in percent over the classes with a positive (docs/methods.md §2)."""
    from mlpl.stages.evaluate.metrics import mean_average_precision as map_

    return float(map_(scores, targets))


def read_run(run: str | Path) -> RunRecord:
    """A finished run folder: its summary, its config (flattened `section.key`, resolved parts included) and
    its per-epoch metrics."""
    from mlpl.stages.evaluate.runs import read_run as read

    return read(Path(run))


def load(run: str | Path, device: str = "cpu", dataset: str | Path | None = None) -> LoadedRun:
    """A trained run's best model with its class names, preprocessing and thresholds.

    Args:
        run: a run folder written by `mlpl train` (only its best.safetensors is read).
        device: "cpu", "cuda", "cuda:1" or "auto".
        dataset: for runs whose weights carry no metadata (older runs): their prepared dataset.

    Returns:
        A `LoadedRun`: `.predict(images)` takes paths, encoded bytes, PIL images or uint8 [H, W, 3] arrays and
        returns `Predictions` (`.probabilities` [n, C], `.labels`, `.classes`, `.unreadable`).
    """
    from mlpl.stages.deploy.model import load_run

    return load_run(Path(run), device, Path(dataset) if dataset is not None else None)


__all__ = [
    "Loss", "PseudoLabeller", "create_loss", "create_pseudolabeller", "evaluate", "list_families", "list_losses",
    "list_pseudolabellers", "load", "mean_average_precision", "read_run",
]
