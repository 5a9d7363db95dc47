"""The "online" teacher: similarities computed inside each training step, as the reference code does.

Kept only to measure what the cached store saves (`mlpl train --online-teacher`, benchmarks). The
teacher and its settings (model, grid, normalisation, text embeddings) come from the store's attributes;
the views are cut from the training batch itself (global view + g×g tiles without overlap), resized to
the teacher's input and normalised — the teacher runs on B·(1 + g²) views every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from mlpl.schemas.store import open_store
from mlpl.stages.precompute.teacher import TeacherCfg, load_teacher
from mlpl.stages.runtime import NORMALIZATIONS
from mlpl.stages.train.stream import model_input


def batch_views(images: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """[B, 3, H, W] → [B, 1 + g², 3, size, size]: the global view then the tiles in row-major order."""
    _, _, height, width = images.shape
    views = [F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)]
    for y in range(grid):
        for x in range(grid):
            rows = slice(y * height // grid, (y + 1) * height // grid)
            cols = slice(x * width // grid, (x + 1) * width // grid)
            tile = images[:, :, rows, cols]
            views.append(F.interpolate(tile, size=(size, size), mode="bilinear", align_corners=False))
    return torch.stack(views, dim=1)


def make_online_sims(store_path: Path, pretrained: str | None = None) -> Callable[[dict, int], torch.Tensor]:
    """A `Trainer(online_sims=...)` callback running the store's teacher on every batch."""
    store = open_store(store_path)
    views, recorded = store.attrs.view_attrs, store.attrs.teacher_attrs
    if pretrained is None and recorded.recorded.get("weights", {}).get("kind") == "random":
        pretrained = "random"  # a timing store: the same randomly initialised teacher
    teacher = load_teacher(TeacherCfg(model=recorded.model, pretrained=pretrained, device="cpu"
                                      if not torch.cuda.is_available() else None))
    text = torch.from_numpy(store.text_emb()).to(teacher.device)
    grid, size = views.grid, teacher.image_size
    mean, std = (torch.tensor(v).view(1, 1, 3, 1, 1) for v in NORMALIZATIONS[views.normalize])

    def sims(batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        # the stream's flipped images in [0, 1] (mean 0, std 1), then the teacher's normalisation
        images = model_input(batch, torch.device("cpu"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        views = (batch_views(images, grid, size) - mean) / std
        emb = teacher.encode_images(views.flatten(0, 1))
        return (emb @ text.T).view(views.shape[0], views.shape[1], -1).float().cpu()

    return sims
