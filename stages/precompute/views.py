"""Stage-one views of an image (docs/methods.md §4.1): the global view and g×g jittered tiles, per augment seed.

For augment seed e and row i every random choice comes from one generator seeded by (e, i), so a
rerun, another worker count or another rank count gives the same views. The draws happen in a fixed
order whatever the switches are (tile overlaps, then one flip per view, then the weak augmentation),
so turning flips off, or r_max to 0, changes nothing else.

Views are cut in DataLoader workers from the once-decoded image with torch's uint8 kernels
(`mlpl.stages.pixels`), passed between processes as uint8, and normalised on the teacher's device on the
whole batch at once (`normalize_views`). The resampling implementation is recorded with the views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.pixels import RESIZE_IMPL, crop_resize_uint8, normalize_uint8
from mlpl.stages.runtime import NORMALIZATIONS

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

# weak augmentation T(·) of docs/methods.md §4.1: each operation is applied independently with this probability
WEAK_AUG_P = 0.2
WEAK_AUG_ROTATION = 15.0
WEAK_AUG_JITTER = 0.2
WEAK_AUG_SHARPNESS = 2.0  # as torchvision's RandomAdjustSharpness(sharpness_factor=2)


@dataclass(frozen=True)
class ViewCfg:
    """View settings; all of them change the teacher's input and are recorded in the store.

    Attributes:
        grid: g, tiles per side (V = 1 + g² views).
        overlap: r_max; per tile and axis r ~ U(0, r_max), overlap = r · tile size (0: released code).
        flip: random horizontal flip drawn per view.
        normalize: 'clip' (CLIP mean/std, default) or 'imagenet' (the released code's statistics).
        image_size: side of every view after resizing (the teacher's input size).
        interpolation: resampling filter of the resize ('bicubic', 'bilinear', 'nearest').
        weak_aug: the weak augmentation T(·) (rotation, colour jitter, sharpness, autocontrast).
    """

    grid: int = 4
    overlap: float = 0.2
    flip: bool = True
    normalize: str = "clip"
    image_size: int = 224
    interpolation: str = "bicubic"
    weak_aug: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.grid, int) or not 1 <= self.grid <= 16:
            raise InputError(f"--grid must be an integer in [1, 16], got {self.grid!r}")
        if not 0.0 <= float(self.overlap) <= 0.5:
            raise InputError(f"--overlap (r_max) must be in [0, 0.5], got {self.overlap!r}")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"--normalize must be one of {sorted(NORMALIZATIONS)}, got {self.normalize!r}")
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise InputError(f"--image-size must be an integer ≥ 8, got {self.image_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"--interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")

    @property
    def num_views(self) -> int:
        return 1 + self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        """The recorded view attributes; `resize` names the resampling implementation."""
        d = asdict(self)
        d["overlap"] = float(self.overlap)
        d["order"] = "global, then tiles row-major"
        d["weak_aug_p"] = WEAK_AUG_P if self.weak_aug else 0.0
        d["resize"] = RESIZE_IMPL
        return d


@dataclass(frozen=True)
class ViewParams:
    """The random draws for one (seed, row).

    Attributes:
        overlaps: float [g², 2], r of each tile along x and y (already scaled by r_max).
        flips: bool [V], whether each view is flipped (all False when flips are off).
        aug: float [V, 8] weak-augmentation draws per view (apply ×4, angle, jitter ×3), or None.
    """

    overlaps: np.ndarray
    flips: np.ndarray
    aug: np.ndarray | None


def draw_view_params(seed: int, row: int, cfg: ViewCfg) -> ViewParams:
    """Every random choice of the views of `row` under augment seed `seed`, in a fixed order."""
    rng = np.random.default_rng([int(seed), int(row)])
    tiles = cfg.grid * cfg.grid
    overlaps = rng.random((tiles, 2)) * float(cfg.overlap)
    flips = rng.random(cfg.num_views) < 0.5
    if not cfg.flip:
        flips = np.zeros_like(flips)
    aug = None
    if cfg.weak_aug:
        apply = rng.random((cfg.num_views, 4)) < WEAK_AUG_P
        angle = rng.uniform(-WEAK_AUG_ROTATION, WEAK_AUG_ROTATION, (cfg.num_views, 1))
        jitter = rng.uniform(1 - WEAK_AUG_JITTER, 1 + WEAK_AUG_JITTER, (cfg.num_views, 3))
        aug = np.concatenate([apply.astype(np.float64), angle, jitter], axis=1)
    return ViewParams(overlaps, flips, aug)


def tile_boxes(width: float, height: float, grid: int, overlaps: np.ndarray) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) of the g×g tiles in row-major order, clipped to the image (docs/methods.md §4.1).

    Tile (x, y) is [x·W/g − o_w, y·H/g − o_h, (x+1)·W/g + o_w, (y+1)·H/g + o_h] with
    o_w = r_x · W/g and o_h = r_y · H/g, where (r_x, r_y) = overlaps[y·g + x].

    Args:
        width: image width W in pixels.
        height: image height H in pixels.
        grid: g.
        overlaps: float [g², 2], r per tile along x and y.

    Returns:
        float64 [g², 4] boxes in pixel coordinates (sub-pixel; the resize samples them exactly).
    """
    return np.array(_tile_boxes(float(width), float(height), grid, np.asarray(overlaps).tolist()), dtype=np.float64)


def view_boxes(width: float, height: float, grid: int, overlaps: np.ndarray) -> np.ndarray:
    """Boxes of all V views: the whole image first, then the tiles."""
    return np.concatenate([[[0.0, 0.0, width, height]], tile_boxes(width, height, grid, overlaps)])


def _tile_boxes(width: float, height: float, grid: int, overlaps: list[list[float]]) -> list[list[float]]:
    # plain floats: for 9–25 tiles this is several times faster than numpy, with the same float64 results
    tw, th = width / grid, height / grid
    boxes = []
    for z, (rx, ry) in enumerate(overlaps):
        y, x = divmod(z, grid)
        ow, oh = rx * tw, ry * th
        boxes.append([min(max(x * tw - ow, 0.0), width), min(max(y * th - oh, 0.0), height),
                      min(max((x + 1) * tw + ow, 0.0), width), min(max((y + 1) * th + oh, 0.0), height)])
    return boxes


def _weak_augment(view: Any, draws: np.ndarray) -> Any:
    """T(·): rotation ±15°, colour jitter 0.2, sharpness ×2, autocontrast, each with p = 0.2."""
    from PIL import Image, ImageEnhance, ImageOps

    apply, angle, jitter = draws[:4] > 0.5, float(draws[4]), draws[5:8]
    if apply[0]:
        view = view.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    if apply[1]:
        view = ImageEnhance.Brightness(view).enhance(float(jitter[0]))
        view = ImageEnhance.Contrast(view).enhance(float(jitter[1]))
        view = ImageEnhance.Color(view).enhance(float(jitter[2]))
    if apply[2]:
        view = ImageEnhance.Sharpness(view).enhance(WEAK_AUG_SHARPNESS)
    if apply[3]:
        view = ImageOps.autocontrast(view)
    return view


def make_views(image: torch.Tensor, seed: int, row: int, cfg: ViewCfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """All views of one image for one augment seed, cut from the once-decoded image with torch's uint8 kernels.

    Args:
        image: uint8 [3, H, W] RGB (`mlpl.stages.pixels.decode_uint8`).
        seed: the augment seed e.
        row: the image's dataset row.
        cfg: view settings.
        out: where to write them (uint8 [V, S, S, 3]); None: a new tensor.

    Returns:
        uint8 [V, S, S, 3]: global view first, then tiles row-major; each cropped (sub-pixel boxes sampled
        where PIL's `resize(box=...)` samples them), resized to S×S, optionally weakly augmented, then
        optionally flipped.
    """
    params = draw_view_params(seed, row, cfg)
    height, width = float(image.shape[1]), float(image.shape[2])
    boxes = [[0.0, 0.0, width, height]] + _tile_boxes(width, height, cfg.grid, params.overlaps.tolist())
    side = cfg.image_size
    if out is None:
        out = torch.empty((cfg.num_views, side, side, 3), dtype=torch.uint8)
    for v, box in enumerate(boxes):
        view = crop_resize_uint8(image, tuple(box), side, cfg.interpolation)
        if params.aug is not None and params.aug[v, :4].any():
            view = _weak_augment_uint8(view, params.aug[v])
        if params.flips[v]:
            view = view.flip(-1)
        out[v].copy_(view.permute(1, 2, 0))
    return out


def _weak_augment_uint8(view: torch.Tensor, draws: np.ndarray) -> torch.Tensor:
    from PIL import Image

    augmented = _weak_augment(Image.fromarray(view.permute(1, 2, 0).numpy()), draws)
    return torch.from_numpy(np.asarray(augmented).copy()).permute(2, 0, 1)


def normalize_views(views: torch.Tensor, normalize: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., S, S, 3] views → normalised float [n, 3, S, S] (one vectorised op per batch).

    Args:
        views: uint8 tensor whose last three dimensions are (S, S, 3), on any device.
        normalize: 'clip' or 'imagenet'.
        dtype: output dtype.
    """
    mean, std = NORMALIZATIONS[normalize]
    return normalize_uint8(views.reshape(-1, *views.shape[-3:]).permute(0, 3, 1, 2), mean, std, dtype)
