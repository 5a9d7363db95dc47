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


def training_state(cfg: TrainCfg, epoch: int, history: dict[str, Any], parts: dict[str, Stateful]) -> dict[str, Any]:
    """What `last.pt` holds after `epoch`: every part's state, the history, the global RNG states, the config."""
    return {
        **{name: part.state_dict() for name, part in parts.items()},
        "epoch": epoch,
        "history": history,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "config": dataclasses.asdict(cfg),
    }


def save_last(out: Path, state: dict[str, Any]) -> None:
    """Write `last.pt` through a temporary file, so a run killed while saving keeps the previous one."""
    tmp = out / (run_schema.LAST_STATE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / run_schema.LAST_STATE)


def load_last(out: Path, cfg: TrainCfg, parts: dict[str, Stateful]) -> tuple[int, dict[str, Any]] | None:
    """Restore every part and the RNG states from `last.pt`; (its epoch, history), or None without one.

    Raises:
        InputError: `last.pt` belongs to a run with another configuration.
    """
    last = out / run_schema.LAST_STATE
    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=False)
    if state["config"] != dataclasses.asdict(cfg):
        raise InputError(f"{last}: belongs to a run with another configuration; choose another --out")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["epoch"], state["history"]


def save_best(out: Path, model: torch.nn.Module) -> None:
    """Write the model's weights to `best.safetensors` through a temporary file."""
    from safetensors.torch import save_file

    tmp = out / (run_schema.BEST_WEIGHTS + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, out / run_schema.BEST_WEIGHTS)


def load_best(out: Path, model: torch.nn.Module) -> None:
    """Load `best.safetensors` into the model."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / run_schema.BEST_WEIGHTS)))
