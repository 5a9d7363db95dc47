"""The public Python API of mlpl, for users who embed it: `mlpl.load(RUN).predict(images)`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlpl.stages.deploy.model import LoadedRun


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


__all__ = ["load"]
