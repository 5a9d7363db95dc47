"""Runtime helpers shared by the stages, written once: device choice, the torchrun world, seeding, normalisation,
the DataLoader worker count.

Every stage that runs under `torchrun` joins the world through `init_distributed` and seeds through
`seed_everything`; image normalisation constants live here so that the teacher's views, the training
stream and the online teacher use the same numbers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mlpl.schemas.errors import InputError

# open_clip.constants, copied so that making views never imports open_clip (DataLoader workers)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the torchrun world (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def world_from_env() -> DistInfo:
    """The torchrun world as its environment variables describe it (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(cuda: bool | None = None) -> DistInfo:
    """Join the torchrun world when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, else gloo.

    Args:
        cuda: whether this process works on a GPU (it then takes GPU `LOCAL_RANK`); None: if one is available.
    """
    info = world_from_env()
    if info.world <= 1:
        return info
    import torch.distributed as dist

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return info


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the torchrun world joined by `init_distributed`."""
    if info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def rank0_first(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0, then (if it worked) on the other ranks; a failure on rank 0 fails every rank."""
    if info.world <= 1:
        return fn()
    import torch.distributed as dist

    result, error = None, None
    if info.rank == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below after the other ranks are told
            error = e
    status = [None if error is None else (isinstance(error, InputError), f"{error}")]
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        is_input, message = status[0]
        raise (InputError if is_input else RuntimeError)(message)
    return fn() if info.rank != 0 else result


def cores_per_process() -> int:
    """The CPU cores this process may use, shared out among the processes torchrun started on this host."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_workers(workers: int | str, option: str = "--workers") -> int:
    """DataLoader workers: a count ≥ 0, or 'auto' = this process's cores minus one (the main process's)."""
    if workers == "auto":
        return cores_per_process() - 1
    try:
        count = int(workers)
    except (TypeError, ValueError):
        raise InputError(f"{option} {workers!r}: expected 'auto' or an integer ≥ 0") from None
    if count < 0 or isinstance(workers, bool) or (isinstance(workers, float) and workers != count):
        raise InputError(f"{option} {workers!r}: expected 'auto' or an integer ≥ 0")
    return count


def workers_option(value: str | None, option: str = "--workers") -> int | str | None:
    """A `--workers` CLI value as configs hold it: None (not given), 'auto', or a checked count."""
    if value is None or value == "auto":
        return value
    return resolve_workers(value, option)
