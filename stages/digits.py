"""The built-in `digits` world: multi-label canvases composed from scikit-learn's handwritten digits.

The 1,797 bundled 8×8 digits (real data) are split once, by a fixed seed, into three disjoint pools:
the teacher pool (single digits the built-in teacher is trained on), the train/val pool and the test
pool. A canvas places 1–4 distinct digits, each in its own cell of a grid, with jitter; its labels are
the digits present. Same arguments, byte-identical output.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CLASSES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POOL_SEED = 20240
POOL_FRACTIONS = {"teacher": 0.4, "trainval": 0.4, "test": 0.2}


@dataclass(frozen=True)
class DigitsCfg:
    """Parameters of the digits world (all recorded in dataset.json)."""

    size: int = 2000  # official train canvases (train + val)
    test_size: int = 500
    canvas: int = 64
    cells: int = 3
    digit: int = 16
    min_digits: int = 1
    max_digits: int = 4
    seed: int = 0


@lru_cache(maxsize=1)
def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8] scaled to 0..255, targets int64 [1797])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def digit_pools() -> dict[str, np.ndarray]:
    """Disjoint index pools into `load_source_digits()`: 'teacher', 'trainval', 'test' (sorted)."""
    _, targets = load_source_digits()
    perm = np.random.RandomState(POOL_SEED).permutation(len(targets))
    n_teacher = int(POOL_FRACTIONS["teacher"] * len(perm))
    n_trainval = int(POOL_FRACTIONS["trainval"] * len(perm))
    return {
        "teacher": np.sort(perm[:n_teacher]),
        "trainval": np.sort(perm[n_teacher : n_teacher + n_trainval]),
        "test": np.sort(perm[n_teacher + n_trainval :]),
    }


def render_digit(image8: np.ndarray, size: int) -> np.ndarray:
    """Upsample one 8×8 digit to size×size (bilinear), uint8."""
    from PIL import Image

    return np.asarray(Image.fromarray(image8).resize((size, size), Image.BILINEAR))


def compose_canvas(
    rng: np.random.RandomState, pool: np.ndarray, cfg: DigitsCfg
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas (uint8 [canvas, canvas]) and its sorted label indices, drawn from `pool`."""
    images, targets = load_source_digits()
    k = rng.randint(cfg.min_digits, cfg.max_digits + 1)
    labels = np.sort(rng.choice(len(CLASSES), size=k, replace=False))
    cells = rng.choice(cfg.cells * cfg.cells, size=k, replace=False)
    canvas = np.zeros((cfg.canvas, cfg.canvas), dtype=np.uint8)
    cell = cfg.canvas / cfg.cells
    slack = max(0.0, cell - cfg.digit)
    for label, c in zip(labels, cells):
        choices = pool[targets[pool] == label]
        src = choices[rng.randint(len(choices))]
        cy, cx = divmod(int(c), cfg.cells)
        x0 = int(round(cx * cell + rng.uniform(0, slack)))
        y0 = int(round(cy * cell + rng.uniform(0, slack)))
        x0, y0 = min(x0, cfg.canvas - cfg.digit), min(y0, cfg.canvas - cfg.digit)
        patch = render_digit(images[src], cfg.digit)
        region = canvas[y0 : y0 + cfg.digit, x0 : x0 + cfg.digit]
        np.maximum(region, patch, out=region)
    return canvas, labels.astype(np.int16)


def encode_png(canvas: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(canvas).convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def generate(cfg: DigitsCfg) -> dict[str, list[tuple[bytes, np.ndarray]]]:
    """The official splits: {'train': [(png, labels)] * size, 'test': [...] * test_size}."""
    pools = digit_pools()
    out: dict[str, list[tuple[bytes, np.ndarray]]] = {}
    for split, pool, n, offset in (("train", "trainval", cfg.size, 0), ("test", "test", cfg.test_size, 1)):
        rng = np.random.RandomState([cfg.seed, offset])
        out[split] = [
            (encode_png(canvas), labels) for canvas, labels in (compose_canvas(rng, pools[pool], cfg) for _ in range(n))
        ]
    return out
