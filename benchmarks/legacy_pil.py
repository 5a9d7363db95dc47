"""The PIL data path both stages used before uint8 pixels (`mlpl.stages.pixels`), kept for side-by-side benchmarks.

Stage two decoded with PIL, resized with PIL's bilinear filter, flipped, converted to float and normalised
each image in the DataLoader worker, and stacked float32 batches; stage one decoded with PIL, cut every view
with PIL's `resize(box=...)` into one tall image, and wrote each batch into a new zero-filled shared-memory
tensor. Only `benchmarks/datapath_cpu.py` uses this module.
"""

from __future__ import annotations

import numpy as np
import torch
from mlpl.schemas.images import decode_rgb
from mlpl.stages.precompute.views import ViewCfg, _tile_boxes, _weak_augment, draw_view_params
from PIL import Image

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def stage_two_image(data: bytes, size: int, flip: bool, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One training image as the worker made it: float32 [3, S, S], normalised."""
    arr = np.array(decode_rgb(data).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    if flip:
        arr = arr[:, ::-1]
    img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
    return (img - mean) / std


def stage_two_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """A float32 batch as it reached the main process: stacked, then moved into shared memory by the pickler."""
    return torch.stack(images).share_memory_()


def stage_one_views(data: bytes, seed: int, row: int, cfg: ViewCfg, out: np.ndarray) -> None:
    """All views of one image, PIL's sub-pixel crops and resizes pasted into one strip."""
    image = decode_rgb(data)
    params = draw_view_params(seed, row, cfg)
    width, height = float(image.width), float(image.height)
    boxes = [[0.0, 0.0, width, height]] + _tile_boxes(width, height, cfg.grid, params.overlaps.tolist())
    side, n_views = cfg.image_size, cfg.num_views
    strip = Image.new("RGB", (side, side * n_views))
    for v, box in enumerate(boxes):
        view = image.resize((side, side), RESAMPLE[cfg.interpolation], box=tuple(box))
        if params.aug is not None:
            view = _weak_augment(view, params.aug[v])
        if params.flips[v]:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        strip.paste(view, (0, v * side))
    out[...] = np.asarray(strip).reshape(n_views, side, side, 3)


def stage_one_buffer(images: int, cfg: ViewCfg) -> np.ndarray:
    """The per-batch buffer: a new zero-filled shared-memory tensor."""
    side = cfg.image_size
    return torch.zeros((images, cfg.num_views, side, side, 3), dtype=torch.uint8).share_memory_().numpy()
