"""uint8 pixels: libjpeg-turbo decoding gives PIL's pixels, torch's uint8 resampling stays within one unit of
PIL's `resize` (sub-pixel boxes included), truncated JPEGs fail."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from mlpl.schemas.images import DECODE_ERRORS
from mlpl.stages.pixels import crop_resize_uint8, decode_uint8, resize_uint8
from PIL import Image

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def natural_image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus fine texture: resampling differences show as they do on photographs."""
    rng = np.random.RandomState(seed)
    coarse = Image.fromarray(rng.randint(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    texture = rng.randint(-24, 25, (height, width, 3))
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pil_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def as_hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_decodes_to_pils_pixels(subsampling):
    data = encode(natural_image(), "JPEG", quality=90, subsampling=subsampling)
    x = decode_uint8(data)
    assert x.dtype == torch.uint8 and x.shape == (3, 120, 160)
    np.testing.assert_array_equal(as_hwc(x), pil_pixels(data))


def test_greyscale_and_cmyk_jpegs_decode_to_rgb_as_pil_does():
    grey = encode(natural_image()[..., 0], "JPEG", quality=90)
    np.testing.assert_array_equal(as_hwc(decode_uint8(grey)), pil_pixels(grey))
    buf = io.BytesIO()
    Image.fromarray(natural_image()).convert("CMYK").save(buf, format="JPEG", quality=90)
    cmyk = buf.getvalue()
    np.testing.assert_array_equal(as_hwc(decode_uint8(cmyk)), pil_pixels(cmyk))


def test_png_and_16_bit_png_follow_the_decoding_rule():
    arr = natural_image()
    np.testing.assert_array_equal(as_hwc(decode_uint8(encode(arr, "PNG"))), arr)
    wide = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    x = as_hwc(decode_uint8(buf.getvalue()))
    np.testing.assert_array_equal(x[..., 0], (wide.astype(np.int64) * 255 + 32767) // 65535)  # scaled, not clipped


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_errors(fmt):
    data = encode(natural_image(), fmt)
    with pytest.raises(DECODE_ERRORS):
        decode_uint8(data[: len(data) // 2])
    with pytest.raises(DECODE_ERRORS):
        decode_uint8(b"\xff\xd8 not a jpeg")


@pytest.mark.parametrize("size", [(448, 448), (37, 90)])
def test_resize_matches_pil_within_one_unit(size):
    arr = natural_image()
    pil = np.asarray(Image.fromarray(arr).resize(size[::-1], Image.BILINEAR)).astype(int)
    ours = as_hwc(resize_uint8(torch.from_numpy(arr).permute(2, 0, 1), size, "bilinear")).astype(int)
    assert np.abs(pil - ours).max() <= 1


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_sub_pixel_boxes_are_sampled_where_pil_samples_them(interpolation):
    arr = natural_image(150, 200, seed=1)
    image, x = Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)
    rng = np.random.RandomState(2)
    gaps, rounded = [], []
    for _ in range(12):
        x0, y0 = rng.uniform(0, 100), rng.uniform(0, 70)
        box = (x0, y0, x0 + rng.uniform(20, 100), y0 + rng.uniform(15, 80))
        pil = np.asarray(image.resize((56, 56), RESAMPLE[interpolation], box=box)).astype(int)
        ours = as_hwc(crop_resize_uint8(x, box, 56, interpolation)).astype(int)
        whole = tuple(float(round(v)) for v in box)
        gaps.append(np.abs(pil - ours).mean())
        rounded.append(np.abs(pil - np.asarray(image.resize((56, 56), RESAMPLE[interpolation], box=whole))).mean())
    # rounding the boxes to whole pixels (what a plain crop does) is several times further from PIL
    assert np.mean(gaps) <= 1.0 and np.mean(gaps) < np.mean(rounded) / 3


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_boxes_at_the_border_and_whole_pixel_boxes_match_pil(interpolation):
    arr = natural_image(90, 120, seed=3)
    image, x = Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)
    for box in [(0.0, 0.0, 120.0, 90.0), (0.0, 0.0, 45.5, 31.25), (80.0, 50.0, 120.0, 90.0)]:
        pil = np.asarray(image.resize((32, 32), RESAMPLE[interpolation], box=box)).astype(int)
        ours = as_hwc(crop_resize_uint8(x, box, 32, interpolation)).astype(int)
        assert np.abs(pil - ours).max() <= 2, box
        assert np.abs(pil - ours).mean() <= 0.1, box


def test_tiny_images_and_boxes_smaller_than_a_pixel():
    x = torch.from_numpy(natural_image(8, 8)[:2, :3].copy()).permute(2, 0, 1)
    for box in [(0.0, 0.0, 3.0, 2.0), (0.5, 0.25, 1.25, 0.75), (2.6, 1.5, 3.0, 2.0)]:
        out = crop_resize_uint8(x, box, 16, "bicubic")
        assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
