"""uint8 pixels for both stages: libjpeg-turbo decoding and torch's uint8 resampling, sub-pixel boxes included.

Decoding follows the project's one rule (`mlpl.schemas.images`): complete decodes only, EXIF orientation
ignored, every mode as 8-bit RGB. JPEG goes through libjpeg-turbo (simplejpeg, strict: a truncated file
is an error, as PIL's lazy decoder would not say); PNG and every other format through the rule's PIL
decoder. Both give the same pixels as PIL for the same file (tests/test_pixels.py).

Resampling uses torch's antialiased uint8 kernels, which compute PIL's filters (same supports, same
Keys a = -0.5 bicubic, same fixed-point rounding) and match PIL's `resize` within one uint8 unit.
PIL's `resize(box=...)` samples a sub-pixel box: output pixel i of an axis is centred at
b0 + s·(i + 0.5) with s = (b1 - b0) / n. torch centres it at s·(j + 0.5) from the start of its input, a
whole pixel c0. Cutting the input at c0 and dropping the first k outputs gives centres c0 + s·(j + 0.5);
choosing the whole pixel c0 and k so that c0 + s·k is within `MAX_OFFSET_ERROR` px of b0 (for boxes at the
image border, exactly) reproduces PIL's sampling positions while the kernel stays torch's (and its
window clipping stays PIL's: the cut leaves every kept output's filter support inside the input). A box that
starts within a filter's reach of the image's start leaves no room for dropped outputs; PIL's sampling is
symmetric, so that axis is mirrored, cut from the other end, and mirrored back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mlpl.schemas.images import decode_rgb

RESIZE_IMPL = "torch-uint8"
"""Recorded with the views of a store: another resampling implementation gives other pixels."""

# support of each filter at scale ≤ 1, in input pixels (PIL's and torch's: bilinear 1, Keys cubic 2)
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "nearest": 0.0}
_AA_KERNELS = {"bilinear": torch._C._nn._upsample_bilinear2d_aa, "bicubic": torch._C._nn._upsample_bicubic2d_aa}
_TORCH_MODE = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
# a sampling position this far from PIL's moves a natural image's resampled pixel by a small fraction of a
# uint8 unit on average; a closer match costs more dropped outputs (about 20 per view on COCO's tiles)
MAX_OFFSET_ERROR = 0.04
_DROPPED = np.arange(129)  # candidate numbers of dropped outputs (scales near 1/2 or 1 drift slowly)

_JPEG_MAGIC = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PIL_ONLY_JPEG = ("CMYK", "YCCK")  # libjpeg-turbo does not convert these to RGB; PIL does


def decode_uint8(data: bytes) -> torch.Tensor:
    """Decode encoded image bytes into uint8 RGB [3, H, W] (a channels-last view of an H×W×3 array).

    Raises:
        ValueError, OSError (`mlpl.schemas.images.DECODE_ERRORS`): the bytes are not a complete image.
    """
    return torch.from_numpy(decode_array(data)).permute(2, 0, 1)


def decode_array(data: bytes) -> np.ndarray:
    """Decode encoded image bytes into a uint8 H×W×3 RGB array (see `decode_uint8`)."""
    if data[:2] == _JPEG_MAGIC:
        import simplejpeg

        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _PIL_ONLY_JPEG:
            # strict: libjpeg-turbo's warnings (premature end of data, corrupt segments) are errors
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    return np.array(decode_rgb(data))  # a writable copy: torch takes the array over


def device_decodable(data: bytes) -> bool:
    """Whether `decode_jpegs` can take these bytes: a JPEG whose colour space converts to RGB on a GPU decoder
    (the others — PNG, CMYK/YCCK JPEG, anything else — are decoded on the CPU by `decode_uint8`)."""
    if data[:2] != _JPEG_MAGIC or data.rstrip(b"\0")[-2:] != _JPEG_END:
        return False  # a JPEG without its end marker is likely cut short: the strict CPU decoder judges it
    import simplejpeg

    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False  # not a readable header: the CPU decoder says what is wrong with it
    return colorspace not in _PIL_ONLY_JPEG


def pack_bytes(files: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded files end to end in one uint8 tensor, with offsets [n + 1] (one tensor crosses a worker boundary
    at the cost of one; n tensors at the cost of n)."""
    joined = bytearray(b"".join(files))
    flat = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
    return flat, torch.tensor(np.concatenate([[0], np.cumsum([len(f) for f in files])]), dtype=torch.long)


def unpack_bytes(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """The files of `pack_bytes` as 1-D uint8 tensors (views, no copy)."""
    ends = offsets.tolist()
    return [flat[ends[j] : ends[j + 1]] for j in range(len(ends) - 1)]


def decode_jpegs(datas: list[torch.Tensor], device: torch.device, size: int, interpolation: str = "bilinear"
                 ) -> list[torch.Tensor | None]:
    """JPEGs (1-D uint8 CPU tensors) decoded on `device` (nvJPEG on a GPU) and resized to uint8 [3, size, size]
    there; None for an image that does not decode.

    The pixels are within a few uint8 units of `decode_uint8` + `resize_uint8` (another IDCT, and the resize
    runs in float and rounds once), not identical: a run records which decoder it used.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images: list[torch.Tensor | None] = list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
        images = []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(None)
    out: list[torch.Tensor | None] = []
    for image in images:
        if image is None:
            out.append(None)
            continue
        x = F.interpolate(image[None].float(), size=(size, size), mode=_TORCH_MODE[interpolation],
                          antialias=interpolation != "nearest")
        out.append(x[0].round_().clamp_(0, 255).to(torch.uint8))
    return out


def resize_uint8(image: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize uint8 [3, H, W] (or [B, 3, H, W]) to `size` (side, or (height, width)) as PIL's `resize` would."""
    height, width = (size, size) if isinstance(size, int) else size
    x = (image if image.dim() == 4 else image[None]).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=(height, width), mode=_TORCH_MODE[interpolation],
                        antialias=interpolation != "nearest")
    return out if image.dim() == 4 else out[0]


def _forward_cut(b0: float, b1: float, length: int, n: int, support: float) -> tuple[int, int, int, float] | None:
    """(c0, c1, k, offset error) of the best cut starting before b0, or None when none fits."""
    s = (b1 - b0) / n
    # the last kept output's window must end inside the cut (or at the image's end, where PIL clips it too)
    c1 = min(length, math.ceil(b1 + support) + 1)
    if b0 == 0.0:
        return 0, c1, 0, 0.0
    # the first kept output's window starts at b0 + s/2 - support: the cut must start at or before it
    latest = math.floor(b0 + s / 2 - support + 0.5) if support else math.floor(b0)
    starts = b0 - s * _DROPPED
    cuts = np.rint(starts)
    error = np.abs(starts - cuts)
    error[(cuts < 0) | ((cuts > latest) & (cuts != 0))] = np.inf
    close = np.flatnonzero(error <= MAX_OFFSET_ERROR)
    k = int(close[0]) if len(close) else int(np.argmin(error))
    if not np.isfinite(error[k]):
        return None
    return int(cuts[k]), c1, k, float(error[k])


def _axis_cut(b0: float, b1: float, length: int, n: int, interpolation: str) -> tuple[int, int, int, float, bool]:
    """(c0, c1, k, s, mirrored) of one axis: cut [c0, c1) of the input (mirrored: reversed), resample at
    scale s, drop the first k outputs (mirrored: reverse the outputs back)."""
    s = (b1 - b0) / n
    support = _SUPPORT[interpolation] * max(s, 1.0)
    forward = _forward_cut(b0, b1, length, n, support)
    if forward is not None and forward[3] <= MAX_OFFSET_ERROR:
        return forward[0], forward[1], forward[2], s, False
    # a box starting within a filter's reach of the image's start: PIL's sampling is symmetric, so the
    # mirrored axis (whose box starts b1 away from the image's end) is cut instead
    mirrored = _forward_cut(length - b1, length - b0, length, n, support)
    if mirrored is not None and (forward is None or mirrored[3] < forward[3]):
        c0, c1, k, _ = mirrored
        return length - c1, length - c0, k, s, True
    if forward is not None:
        return forward[0], forward[1], forward[2], s, False
    return 0, min(length, math.ceil(b1 + support) + 1), round(b0 / s), s, False


def crop_resize_uint8(image: torch.Tensor, box: tuple[float, float, float, float], size: int,
                      interpolation: str = "bicubic") -> torch.Tensor:
    """The sub-pixel box (x0, y0, x1, y1) of uint8 [3, H, W], resampled to [3, size, size] as PIL's
    `resize((size, size), box=box)` would (see the module docstring)."""
    _, height, width = image.shape
    x0, y0, x1, y1 = box
    cx0, cx1, kx, sx, mirror_x = _axis_cut(x0, x1, width, size, interpolation)
    cy0, cy1, ky, sy, mirror_y = _axis_cut(y0, y1, height, size, interpolation)
    mirrored = [d for d, m in ((2, mirror_y), (3, mirror_x)) if m]
    cut = image[None, :, cy0:cy1, cx0:cx1]
    if mirrored:
        cut = cut.flip(mirrored)
    # the kernels' fast path wants a dense channels-last input (2.5× faster than a strided cut)
    cut = cut.contiguous(memory_format=torch.channels_last)
    # the kernels' own entry points take the output size and the scale apart: the scale stays PIL's
    # s = box side / size on both axes, whatever the cut's size
    # one more output where it would equal the cut's side: the kernels copy an input of the output's size
    # as it is, whatever the scale
    out_size = [ky + size + (ky + size == cut.shape[2]), kx + size + (kx + size == cut.shape[3])]
    if interpolation == "nearest":
        out = torch._C._nn._upsample_nearest_exact2d(cut, out_size, 1.0 / sy, 1.0 / sx)
    else:
        out = _AA_KERNELS[interpolation](cut, out_size, False, 1.0 / sy, 1.0 / sx)
    out = out[0, :, ky : ky + size, kx : kx + size]
    return out.flip([d - 1 for d in mirrored]) if mirrored else out


def normalize_uint8(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                    dtype: torch.dtype = torch.float32, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [..., 3, H, W] on any device → float (x / 255 − mean) / std, in the input's memory layout.

    Args:
        flip: indices (along the first dimension) of images to mirror left-right, or None.
    """
    if flip is not None and len(flip):
        # mirrored while still uint8 (a quarter of the bytes), on a copy: the caller's batch stays as it is
        images = images.clone()
        images[flip] = images[flip].flip(-1)
    x = images.to(dtype)
    shape = (3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=dtype, device=images.device).view(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=dtype, device=images.device).view(shape)
    return x.mul_(scale).sub_(shift)


_END = object()


def decoded_ahead(batches: Iterable[dict[str, torch.Tensor]],
                  decoder: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                  depth: int = 2) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` with their JPEG bytes decoded by `decoder`, up to `depth` batches ahead, in a thread: on a GPU
    the decoding (its own CUDA stream) overlaps the training step instead of adding to it.

    The consumer's stream waits for each batch's decoding before using it; an error in the thread is raised
    here; closing the generator stops the thread (and with it the DataLoader it reads).
    """
    import queue
    import threading

    cuda = torch.cuda.is_available()
    side = torch.cuda.Stream() if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for part in batches:
                    if "jpeg" in part:
                        part = decoder(part)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not put((part, event)):
                        return
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
            return
        put(_END)

    thread = threading.Thread(target=work, name="decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            part, event = item
            if event is not None:
                current = torch.cuda.current_stream()
                current.wait_event(event)
                for value in part.values():
                    if isinstance(value, torch.Tensor) and value.is_cuda:
                        value.record_stream(current)  # its memory is not reused before this stream is done
            yield part
    finally:
        stop.set()
        thread.join()
