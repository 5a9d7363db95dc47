"""A run's checkpoints: `last.pt` (everything needed to resume, written atomically) and `best.safetensors`."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.schemas.state import config_differences, load_state, load_weights, save_state, save_tensors
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


def run_differences(state: dict[str, Any], cfg: TrainCfg, fingerprint: str) -> list[str]:
    """How a saved state differs from this configuration (paths aside) and dataset (its fingerprint)."""
    changed = config_differences(state.get("config", {}), dataclasses.asdict(cfg), ignore=PATH_FIELDS)
    if state.get("dataset_fingerprint", fingerprint) not in ("", fingerprint):
        changed.append(f"dataset fingerprint: saved {state['dataset_fingerprint']}, now {fingerprint}")
    return changed


def save_last(out: Path, state: dict[str, Any]) -> None:
    """Write `last.pt` (safetensors and JSON, no pickle: schemas/state.py) through a temporary file, so a run
    killed while saving keeps the previous one."""
    save_state(out / run_schema.LAST_STATE, state)


def load_last(out: Path, cfg: TrainCfg, parts: dict[str, Stateful],
              fingerprint: str = "") -> tuple[int, dict[str, Any]] | None:
    """Restore every part and the RNG states from `last.pt`; (its epoch, history), or None without one.

    The metrics lines of epochs after the saved one (a run killed between its metrics and its checkpoint)
    are removed, so the resumed epochs replace them instead of repeating them.

    Raises:
        InputError: `last.pt` was written by an older mlpl (a pickle, never loaded), is cut short or damaged,
            or belongs to a run with another configuration (paths aside: a moved or copied run resumes).
    """
    last = out / run_schema.LAST_STATE
    if not last.exists():
        return None
    state = load_state(last)
    changed = run_differences(state, cfg, fingerprint)
    if changed:
        raise InputError(f"{last}: belongs to a run with another configuration ({'; '.join(changed[:4])}); "
                         "pass the same options to resume it, or choose another --out")
    try:
        for name, part in parts.items():
            part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        epoch, history = int(state["epoch"]), state["history"]
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{last}: the saved state does not fit this run ({e.__class__.__name__}: "
                         f"{str(e)[:200]}); delete it to start the run again") from None
    run_schema.keep_metrics_until(out, epoch)
    return epoch, history


def save_best(out: Path, model: torch.nn.Module, meta: run_schema.ModelMeta | None = None) -> None:
    """Write the model's weights to `best.safetensors` through a temporary file, with `meta` (class names,
    preprocessing, backbone, threshold) in its metadata so that the file alone can be used on new images."""
    metadata = {run_schema.MODEL_META_KEY: meta.to_json()} if meta is not None else None
    save_tensors(out / run_schema.BEST_WEIGHTS, {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                 metadata)


def load_best(out: Path, model: torch.nn.Module) -> None:
    """Load `best.safetensors` into the model (a cut or damaged file is an `InputError` naming it)."""
    model.load_state_dict(load_weights(out / run_schema.BEST_WEIGHTS))
