"""A run's checkpoints: `last.pt` (everything needed to resume, written atomically) and `best.safetensors`."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.stages.train.config import TrainCfg


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


PATH_FIELDS = ("dataset", "pseudo_store", "out")  # where things are, not what they are: a moved run resumes


def training_state(cfg: TrainCfg, epoch: int, history: dict[str, Any], parts: dict[str, Stateful],
                   fingerprint: str = "") -> dict[str, Any]:
    """What `last.pt` holds after `epoch`: every part's state, the history, the global RNG states, the config
    and the dataset's fingerprint."""
    return {
        **{name: part.state_dict() for name, part in parts.items()},
        "epoch": epoch,
        "history": history,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "config": dataclasses.asdict(cfg),
        "dataset_fingerprint": fingerprint,
    }


def same_run(state: dict[str, Any], cfg: TrainCfg, fingerprint: str) -> bool:
    """Whether a saved state belongs to this configuration (paths aside) and dataset (its fingerprint)."""
    def strip(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in PATH_FIELDS}

    return strip(state["config"]) == strip(dataclasses.asdict(cfg)) and \
        state.get("dataset_fingerprint", fingerprint) in ("", fingerprint)


def save_last(out: Path, state: dict[str, Any]) -> None:
    """Write `last.pt` through a temporary file, so a run killed while saving keeps the previous one."""
    tmp = out / (run_schema.LAST_STATE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / run_schema.LAST_STATE)


def load_last(out: Path, cfg: TrainCfg, parts: dict[str, Stateful],
              fingerprint: str = "") -> tuple[int, dict[str, Any]] | None:
    """Restore every part and the RNG states from `last.pt`; (its epoch, history), or None without one.

    Raises:
        InputError: `last.pt` belongs to a run with another configuration.
    """
    last = out / run_schema.LAST_STATE
    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=False)
    if not same_run(state, cfg, fingerprint):
        raise InputError(f"{last}: belongs to a run with another configuration; choose another --out")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["epoch"], state["history"]


def save_best(out: Path, model: torch.nn.Module, meta: run_schema.ModelMeta | None = None) -> None:
    """Write the model's weights to `best.safetensors` through a temporary file, with `meta` (class names,
    preprocessing, backbone, threshold) in its metadata so that the file alone can be used on new images."""
    from safetensors.torch import save_file

    tmp = out / (run_schema.BEST_WEIGHTS + ".tmp")
    metadata = {run_schema.MODEL_META_KEY: meta.to_json()} if meta is not None else None
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp), metadata=metadata)
    os.replace(tmp, out / run_schema.BEST_WEIGHTS)


def load_best(out: Path, model: torch.nn.Module) -> None:
    """Load `best.safetensors` into the model."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / run_schema.BEST_WEIGHTS)))
