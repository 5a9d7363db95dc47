"""Stage-one views (docs/methods.md §4.1): golden tile boxes, pinned random draws, determinism, flips, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.precompute.views import (
    ViewCfg,
    draw_view_params,
    make_views,
    normalize_views,
    tile_boxes,
    view_boxes,
)
from mlpl.stages.runtime import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from PIL import Image

# a 60×30 image cut into 3×3 tiles of 20×10 px, each tile its own colour
TILE_COLOURS = np.array([[10 * (i + 1), 200 - 15 * i, (37 * i) % 256] for i in range(9)], dtype=np.uint8)


def tiled_image() -> Image.Image:
    arr = np.zeros((30, 60, 3), dtype=np.uint8)
    for z, colour in enumerate(TILE_COLOURS):
        y, x = divmod(z, 3)
        arr[y * 10 : (y + 1) * 10, x * 20 : (x + 1) * 20] = colour
    return Image.fromarray(arr)


def views_of(image: Image.Image, seed: int, row: int, cfg: ViewCfg) -> np.ndarray:
    """make_views on a PIL image's pixels, as a numpy array [V, S, S, 3]."""
    return make_views(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1), seed, row, cfg).numpy()


def test_tile_boxes_without_overlap_partition_the_image_row_major():
    boxes = tile_boxes(60, 30, 3, np.zeros((9, 2)))
    expected = [
        [0, 0, 20, 10], [20, 0, 40, 10], [40, 0, 60, 10],
        [0, 10, 20, 20], [20, 10, 40, 20], [40, 10, 60, 20],
        [0, 20, 20, 30], [20, 20, 40, 30], [40, 20, 60, 30],
    ]
    np.testing.assert_allclose(boxes, expected)


def test_tile_boxes_with_overlap_grow_per_axis_and_clip_to_the_image():
    overlaps = np.zeros((9, 2))
    overlaps[0] = (0.2, 0.2)  # corner: grows outward, clipped
    overlaps[4] = (0.1, 0.2)  # centre: o_w = 0.1·20 = 2, o_h = 0.2·10 = 2
    overlaps[5] = (0.0, 0.5)  # only along y
    overlaps[8] = (0.5, 0.5)
    boxes = tile_boxes(60, 30, 3, overlaps)
    np.testing.assert_allclose(boxes[0], [0, 0, 24, 12])
    np.testing.assert_allclose(boxes[4], [18, 8, 42, 22])
    np.testing.assert_allclose(boxes[5], [40, 5, 60, 25])
    np.testing.assert_allclose(boxes[8], [30, 15, 60, 30])
    np.testing.assert_allclose(boxes[1], [20, 0, 40, 10])


def test_non_integer_tile_sizes_are_kept_sub_pixel():
    boxes = view_boxes(64, 64, 3, np.zeros((9, 2)))
    assert boxes.shape == (10, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 64, 64])  # the global view comes first
    np.testing.assert_allclose(boxes[1], [0, 0, 64 / 3, 64 / 3])
    np.testing.assert_allclose(boxes[9], [128 / 3, 128 / 3, 64, 64])


def test_random_draws_are_pinned_per_seed_and_row():
    params = draw_view_params(0, 0, ViewCfg(grid=2, overlap=0.2))
    np.testing.assert_allclose(
        params.overlaps,
        [[0.12739234, 0.05395734], [0.0081947, 0.00330553], [0.16265405, 0.18255112], [0.12132716, 0.14589931]],
        rtol=1e-6,
    )
    assert params.flips.tolist() == [False, False, False, True, False]
    assert params.aug is None
    again = draw_view_params(0, 0, ViewCfg(grid=2, overlap=0.2))
    np.testing.assert_array_equal(again.overlaps, params.overlaps)
    other_row = draw_view_params(0, 1, ViewCfg(grid=2, overlap=0.2))
    other_seed = draw_view_params(1, 0, ViewCfg(grid=2, overlap=0.2))
    assert not np.allclose(other_row.overlaps, params.overlaps)
    assert not np.allclose(other_seed.overlaps, params.overlaps)


def test_switches_do_not_shift_the_other_draws():
    base = draw_view_params(3, 17, ViewCfg(grid=2, overlap=0.2))
    no_flip = draw_view_params(3, 17, ViewCfg(grid=2, overlap=0.2, flip=False))
    weak = draw_view_params(3, 17, ViewCfg(grid=2, overlap=0.2, weak_aug=True))
    released = draw_view_params(3, 17, ViewCfg(grid=2, overlap=0.0))  # r = 0: the released code
    np.testing.assert_array_equal(no_flip.overlaps, base.overlaps)
    assert not no_flip.flips.any()
    np.testing.assert_array_equal(weak.overlaps, base.overlaps)
    np.testing.assert_array_equal(weak.flips, base.flips)
    assert weak.aug is not None and weak.aug.shape == (5, 8)
    assert not released.overlaps.any()
    np.testing.assert_array_equal(released.flips, base.flips)


def test_tile_views_show_their_tile():
    cfg = ViewCfg(grid=3, overlap=0.0, flip=False, image_size=8, interpolation="nearest")
    views = views_of(tiled_image(), seed=0, row=5, cfg=cfg)
    assert views.shape == (10, 8, 8, 3) and views.dtype == np.uint8
    for z, colour in enumerate(TILE_COLOURS):
        assert (views[1 + z] == colour).all(), f"tile {z}"
    # the global view is the whole image: its corners are the corner tiles
    assert (views[0, 0, 0] == TILE_COLOURS[0]).all() and (views[0, -1, -1] == TILE_COLOURS[8]).all()


def test_bicubic_tile_views_centre_on_their_tile():
    cfg = ViewCfg(grid=3, overlap=0.0, flip=False, image_size=16)
    views = views_of(tiled_image(), seed=0, row=5, cfg=cfg)
    for z, colour in enumerate(TILE_COLOURS):
        assert np.abs(views[1 + z, 6:10, 6:10].astype(int) - colour).max() <= 1


def test_flipped_views_are_mirror_images():
    base = ViewCfg(grid=3, overlap=0.2, flip=False, image_size=12, interpolation="nearest")
    flipped = ViewCfg(grid=3, overlap=0.2, flip=True, image_size=12, interpolation="nearest")
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (30, 60, 3), dtype=np.uint8))
    plain, views = views_of(image, 4, 9, base), views_of(image, 4, 9, flipped)
    flips = draw_view_params(4, 9, flipped).flips
    assert 0 < flips.sum() < len(flips)
    for v, f in enumerate(flips):
        np.testing.assert_array_equal(views[v], plain[v][:, ::-1] if f else plain[v])


def test_views_are_within_one_unit_of_pils_sub_pixel_resize_on_average():
    """Each view equals PIL's resize of its sub-pixel box (then flipped) within ~1 uint8 unit on average."""
    rng = np.random.RandomState(5)
    coarse = Image.fromarray(rng.randint(0, 256, (12, 16, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
    image = Image.fromarray(np.clip(np.asarray(coarse).astype(int) + rng.randint(-20, 21, (120, 160, 3)), 0, 255)
                            .astype(np.uint8))
    cfg = ViewCfg(grid=3, overlap=0.2, image_size=48)
    gaps = []
    for row in range(4):
        views, params = views_of(image, 1, row, cfg), draw_view_params(1, row, cfg)
        for v, box in enumerate(view_boxes(160, 120, 3, params.overlaps)):
            pil = np.asarray(image.resize((48, 48), Image.BICUBIC, box=tuple(box))).astype(int)
            pil = pil[:, ::-1] if params.flips[v] else pil
            gaps.append(np.abs(views[v].astype(int) - pil).mean())
    assert np.mean(gaps) <= 1.0 and max(gaps) <= 4.0


def test_views_are_deterministic_and_depend_on_the_seed():
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (40, 40, 3), dtype=np.uint8))
    cfg = ViewCfg(grid=2, overlap=0.2, image_size=16, weak_aug=True)
    a, b = views_of(image, 2, 7, cfg), views_of(image, 2, 7, cfg)
    assert a.tobytes() == b.tobytes()
    assert views_of(image, 3, 7, cfg).tobytes() != a.tobytes()


def test_weak_augmentation_changes_only_the_views_it_draws():
    image = Image.fromarray(np.random.RandomState(2).randint(0, 256, (40, 40, 3), dtype=np.uint8))
    on = ViewCfg(grid=2, overlap=0.2, image_size=16, weak_aug=True)
    off = ViewCfg(grid=2, overlap=0.2, image_size=16)
    # find a row with at least one augmented and one plain view
    for row in range(50):
        applied = draw_view_params(0, row, on).aug[:, :4].any(axis=1)
        if 0 < applied.sum() < len(applied):
            break
    a, b = views_of(image, 0, row, on), views_of(image, 0, row, off)
    for v, changed in enumerate(applied):
        assert (a[v].tobytes() != b[v].tobytes()) == bool(changed)


@pytest.mark.parametrize(
    ("name", "mean", "std"), [("clip", CLIP_MEAN, CLIP_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)]
)
def test_normalisation(name, mean, std):
    views = torch.full((2, 3, 4, 4, 3), 255, dtype=torch.uint8)
    x = normalize_views(views, name)
    assert x.shape == (6, 3, 4, 4) and x.dtype == torch.float32
    expected = (1.0 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(x[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [({"grid": 0}, "--grid"), ({"overlap": 0.7}, "--overlap"), ({"normalize": "imagnet"}, "--normalize"),
     ({"image_size": 2}, "--image-size"), ({"interpolation": "lanczos"}, "--interpolation")],
)
def test_bad_view_settings_name_the_option(kwargs, option):
    with pytest.raises(InputError, match=option):
        ViewCfg(**kwargs)


def test_settings_are_recorded():
    d = ViewCfg(grid=3, overlap=0.0, image_size=32).to_dict()
    assert d["grid"] == 3 and d["overlap"] == 0.0 and d["normalize"] == "clip" and d["image_size"] == 32
    assert d["flip"] is True and d["weak_aug"] is False and "order" in d
