"""Runtime helpers shared by the stages: choosing a torch device."""

from __future__ import annotations

import torch
from mlpl.schemas.errors import InputError


def pick_device(device: str | None) -> torch.device:
    """`None` or 'auto': CUDA if available, else CPU; otherwise the named device, checked."""
    if device and device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise InputError(f"--device {device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
