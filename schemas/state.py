"""A run's resumable state (`last.pt`) written and read without pickle: no run folder can run code.

`last.pt` is a safetensors file: every tensor and numpy array of the state is one tensor of the file, and
the rest of the state (numbers, strings, lists, tuples, dicts with str or int keys, None) is a JSON tree
in the file's metadata whose leaves point at those tensors. Reading it parses a JSON header and copies
tensor bytes; nothing in it is ever executed, whoever wrote it. A file written by an older mlpl (a
pickle) or cut short is refused with a message that says so.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError

STATE_FORMAT = "mlpl.state"
STATE_VERSION = 1
_META_KEY = "mlpl.state"


def _encode(obj: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("an object array cannot be saved without pickle")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if any(not isinstance(k, str | int) or isinstance(k, bool) for k in obj):
            raise TypeError(f"dict keys must be str or int, got {[type(k).__name__ for k in obj]}")
        return {"__dict__": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"{type(obj).__name__} is not part of a training state (tensors, arrays, plain values)")


def _decode(obj: Any, tensors: dict[str, Any], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    try:
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
        return {k: _decode(v, tensors, where) for k, v in obj["__dict__"]}
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: malformed training state ({e.__class__.__name__}: {e}); delete it to start "
                         "the run again") from None


def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (a temporary file beside it, then a rename).

    Raises:
        OSError: the file system refused the write (disk full, read-only, ...), with the file named, as any
            other write in the project fails (safetensors reports these as its own error type).
    """
    from safetensors.torch import save_file

    tmp = Path(str(path) + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except Exception as e:  # safetensors' own error type carries the OS error in its message
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(tmp)) from None
    os.replace(tmp, path)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically."""
    tensors: dict[str, Any] = {}
    tree = _encode(state, tensors)
    save_tensors(path, tensors, {_META_KEY: json.dumps({"format": STATE_FORMAT, "version": STATE_VERSION,
                                                        "state": tree})})


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by `save_state`; anything else is an `InputError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    start_over = "delete it to start the run from its first epoch, or choose another --out"
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header's "{"; its first byte may well be
    # 0x80, so only a file that is not safetensors is checked for a pickle or torch.save's zip of pickles
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise InputError(f"{path}: written with pickle by an older mlpl; it is never loaded (a pickle can run "
                         f"code); {start_over}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error type for a short or malformed file
        raise InputError(f"{path}: not a complete training state ({e.__class__.__name__}: {e}); the file is "
                         f"truncated or damaged; {start_over}") from None
    try:
        doc = json.loads(meta[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"{path}: a safetensors file without an mlpl training state; {start_over}") from None
    if doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
        raise InputError(f"{path}: training state {doc.get('format')!r} version {doc.get('version')}, this mlpl "
                         f"reads {STATE_FORMAT!r} version {STATE_VERSION}; {start_over}")
    state = _decode(doc["state"], tensors, str(path))
    if not isinstance(state, dict):
        raise InputError(f"{path}: malformed training state (not a mapping); {start_over}")
    return state


def load_weights(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors weights file (`best.safetensors`); a short or damaged file is an
    `InputError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; expected the weights `mlpl train` writes")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a short or malformed file
        raise InputError(f"{path}: not a complete safetensors file ({e.__class__.__name__}: {e}); the file is "
                         "truncated or damaged") from None


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Settings that differ between a saved run config and this one, except the keys in `ignore` (where things
    are, so that a copied or moved run folder resumes)."""
    keys = sorted((set(saved) | set(current)) - set(ignore))

    def plain(value: Any) -> Any:  # the JSON tree holds a tuple (a mean, a std) as a list
        return list(value) if isinstance(value, tuple) else value

    return [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in keys
            if plain(saved.get(k)) != plain(current.get(k))]
