"""How a shard's image bytes become pixels: the one decoding rule both stages (and prepare's check) follow.

The rule, recorded once here so that the teacher's views (stage one) and the training images (stage two)
come from the same pixels:

- Decoding is complete: a truncated or damaged file is an error (`OSError`/`ValueError`), never a grey tail.
- EXIF orientation is **ignored**: pixels are used as stored. This is what the literature's loaders do
  (PIL's `Image.open(...).convert("RGB")`) and what COCO's and VOC's annotations refer to; libjpeg-turbo
  and `torchvision.io.decode_jpeg` (whose `apply_exif_orientation` defaults to False) follow it too.
  `mlpl prepare` counts the images that carry an orientation other than "upright" (`exif_orientation`) and
  records the count in `dataset.json`, so such images are never silently taken for upright ones.
- Every mode becomes 8-bit RGB by scaling, never clipping: 16-bit and 32-bit integer greyscale are scaled
  from [0, 65535] to [0, 255] (rounded); palette, greyscale, CMYK and alpha images go through PIL's
  conversion (alpha is dropped, as the literature's loaders drop it).

A faster decoder (libjpeg-turbo, torchvision) may replace `decode_rgb` where it gives the same pixels under
this rule; `decode_rgb` stays the reference that defines them.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

EXIF_ORIENTATION_TAG = 0x0112
UPRIGHT = 1
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, MemoryError)
"""What a corrupt image raises while decoding (PIL uses all of these); anything else is a bug, not bad data."""

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image) -> Image:
    """An opened, decoded PIL image as 8-bit RGB by this module's rule (wide modes scaled, not clipped)."""
    from PIL import Image as PILImage

    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return PILImage.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    if image.mode == "F":
        grey = (np.asarray(image, dtype=np.float64).clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return PILImage.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_rgb(data: bytes) -> Image:
    """Decode encoded image bytes fully into an 8-bit RGB PIL image (EXIF orientation ignored).

    Raises:
        OSError, ValueError, SyntaxError, EOFError: the bytes are not a complete, decodable image
            (`DECODE_ERRORS` lists them for callers that skip and count such images).
    """
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        image.load()  # the whole file: a truncated JPEG fails here (PIL's verify() does not decode)
        return to_rgb(image).copy() if image.mode == "RGB" else to_rgb(image)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of encoded bytes (1 = upright, also when absent or unreadable)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(EXIF_ORIENTATION_TAG, UPRIGHT) or UPRIGHT)
    except DECODE_ERRORS:
        return UPRIGHT
