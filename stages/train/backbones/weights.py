"""Backbone weights files: read without running code (safetensors, or `torch.load(weights_only=True)`), unwrapped
from the usual checkpoint containers, and loaded only when every key and shape fits."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from torch import nn

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "state_dict_ema")
"""Keys under which training scripts nest a state dict (the first one present wins)."""

SHOWN_KEYS = 3


def read_state_dict(path: str | Path, option: str = "--backbone-weights") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a .pth/.pt/.bin read with `weights_only=True` (a file that
    needs arbitrary pickled objects is refused, never executed). `{"state_dict": ...}`/`{"model": ...}` wrappers
    are unwrapped and DistributedDataParallel's `module.` prefix is stripped.

    Raises:
        InputError: not a file, unreadable, pickled code, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option}: {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{option} {path}: not a readable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise InputError(
                f"{option} {path}: not a weights file that loads without running code: it holds pickled Python "
                f"objects besides tensors, so it is not loaded. Save its state dict alone "
                f"(torch.save(model.state_dict(), FILE)) or as safetensors. ({str(e).splitlines()[0][:160]})"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise InputError(f"{option} {path}: not a readable PyTorch weights file ({e})") from None
    return unwrap_state_dict(state, f"{option} {path}")


def unwrap_state_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
    """A flat name → tensor dict from a checkpoint: wrappers unwrapped, `module.` stripped, non-tensors dropped."""
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if key is None:
            break
        state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{where}: expected a state dict (names → tensors), found {type(state).__name__}")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{where}: no tensors found (keys {sorted(map(str, state))[:SHOWN_KEYS]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], where: str, name: str) -> None:
    """Load `state` into `module` only if every key and shape fits; otherwise name the first mismatching keys.

    Raises:
        InputError: missing keys, unexpected keys or shape mismatches (the first few of each).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:SHOWN_KEYS]}" + (f" (+{len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS
                                                    else "")
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatches", shapes)) if items]
        raise InputError(f"{where}: does not fit backbone {name!r}: {'; '.join(parts)}. Expected weights of the same "
                         "architecture (a state dict, optionally wrapped as {'state_dict': ...} or {'model': ...})")
    module.load_state_dict(state, strict=True)
