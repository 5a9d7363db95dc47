"""The built-in digits teacher: a tiny open_clip CLIP trained contrastively on the digits world's teacher pool.

So that stage one runs on a fresh machine with no download, the `digits` world ships its own teacher:
an `open_clip.CLIP` from a small custom config (a ModifiedResNet vision tower, `layers=(1,1,1,1)`,
width 32, 32 px input; a 2-layer, width-64 text transformer with context 16 and the standard
tokenizer), trained on single digits of the **teacher pool** only (`digit_pools()['teacher']`), each
with the caption "a photo of the digit {name}.".

Training samples are the views stage one will show the teacher: a 64 px canvas with the labelled digit
in one cell of the 3×3 layout (the canvas generator's jitter), random neighbours in the other cells,
cropped around that cell with a random margin and resized to 32 px. A batch holds `groups` groups of
one tile per class plus one tile whose cell is empty (captioned "a photo of an empty black square.",
in training only), so inside a group the 11 captions are distinct and open_clip's `ClipLoss` (the
symmetric contrastive loss) has no false negatives; its image→text half is the cross-entropy of each
image against the class captions.

The trained model is cached as an open_clip model folder (`open_clip_config.json`,
`open_clip_model.safetensors`, `metrics.json`) under `$MLPL_CACHE/teachers/digits-<hash>/`
(default `~/.cache/mlpl`), where the hash covers everything that changes the weights; it is loaded
through open_clip's own `local-dir:` path like any other model folder. Training is deterministic
(fixed seeds, one thread), so the cache is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.stages.digits import CLASSES, DigitsCfg, digit_pools, load_source_digits, render_digit
from mlpl.stages.precompute.views import normalize_views
from mlpl.stages.runtime import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

CAPTION_TEMPLATE = "a photo of the digit {name}."
# training-only caption of tiles whose cell is empty (most tiles of a canvas are): without it an empty
# tile lands near some digit's caption and the max over tiles fires for that digit on every image
BACKGROUND_CAPTION = "a photo of an empty black square."
BACKGROUND = len(CLASSES)
CONFIG_JSON = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
METRICS_JSON = "metrics.json"
MIN_ACCURACY = 0.90

DIGITS_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
DIGITS_PREPROCESS_CFG: dict[str, Any] = {
    "size": 32,
    "mean": list(CLIP_MEAN),
    "std": list(CLIP_STD),
    "interpolation": "bilinear",
    "resize_mode": "squash",
}


@dataclass(frozen=True)
class DigitsFitCfg:
    """The training recipe; every field enters the cache hash.

    Attributes:
        steps: optimiser steps.
        groups: groups of 10 images (one per class) per batch.
        lr: AdamW peak learning rate (cosine decay to 0 after a linear warm-up).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        neighbour_p: probability that each other cell of a training canvas holds a digit.
        margin: range of the crop's side relative to a cell (covers tiles with overlap up to 0.3).
        flip_p: probability of a horizontal flip of a training tile.
        seed: seed of the initialisation and of the sample stream.
        eval_seed: seed of the held-out evaluation draw.
        threads: torch threads while fitting (1: the same bytes on every machine).
        recipe_version: bump when the code of the recipe changes.
    """

    steps: int = 200
    groups: int = 6
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.01
    neighbour_p: float = 0.2
    margin: tuple[float, float] = (0.85, 1.6)
    flip_p: float = 0.5
    seed: int = 0
    eval_seed: int = 1
    threads: int = 1
    recipe_version: int = 3


def cache_root() -> Path:
    """`$MLPL_CACHE`, else `~/.cache/mlpl`."""
    env = os.environ.get("MLPL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlpl"


def recipe_hash(cfg: DigitsFitCfg = DigitsFitCfg()) -> str:
    """Hash of everything that changes the weights (model config, preprocessing, recipe, data world)."""
    world = asdict(DigitsCfg())
    blob = json.dumps(
        {"model": DIGITS_MODEL_CFG, "preprocess": DIGITS_PREPROCESS_CFG, "fit": asdict(cfg),
         "caption": CAPTION_TEMPLATE, "background": BACKGROUND_CAPTION, "world": world, "pools": "digit_pools"},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def teacher_dir(root: Path | None = None, cfg: DigitsFitCfg = DigitsFitCfg()) -> Path:
    """Where the digits teacher of this recipe is cached."""
    return Path(root or cache_root()) / "teachers" / f"digits-{recipe_hash(cfg)}"


def is_cached(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (CONFIG_JSON, WEIGHTS_FILE, METRICS_JSON))


def read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / METRICS_JSON).read_text())


class TileSampler:
    """Single digits as stage one shows them: one tile of a 3×3, 64 px digits canvas, resized to 32 px.

    Args:
        pool: indices into `load_source_digits()` to draw the labelled digit and neighbours from.
        rng: the generator of every draw.
        neighbour_p: probability that each other cell holds a (random) digit.
        margin: (low, high) range of the crop side in cells.
        flip_p: probability of a horizontal flip (stage one flips views at random, docs/methods.md §4.1, so the
            teacher is trained to be invariant to it).
        interpolation: PIL resampling filter name of the resize.
    """

    def __init__(
        self,
        pool: np.ndarray,
        rng: np.random.RandomState,
        neighbour_p: float,
        margin: tuple[float, float],
        flip_p: float = 0.0,
        interpolation: str = DIGITS_PREPROCESS_CFG["interpolation"],
    ) -> None:
        images, targets = load_source_digits()
        self.world = DigitsCfg()
        self.pool = np.asarray(pool)
        self.by_class = [self.pool[targets[self.pool] == c] for c in range(len(CLASSES))]
        self.rendered = {int(i): render_digit(images[i], self.world.digit) for i in self.pool}
        self.rng = rng
        self.neighbour_p = neighbour_p
        self.margin = margin
        self.flip_p = flip_p
        self.interpolation = interpolation

    def _place(self, canvas: np.ndarray, src: int, cell: int) -> None:
        w = self.world
        size = w.canvas / w.cells
        slack = max(0.0, size - w.digit)
        cy, cx = divmod(cell, w.cells)
        x0 = min(int(round(cx * size + self.rng.uniform(0, slack))), w.canvas - w.digit)
        y0 = min(int(round(cy * size + self.rng.uniform(0, slack))), w.canvas - w.digit)
        region = canvas[y0 : y0 + w.digit, x0 : x0 + w.digit]
        np.maximum(region, self.rendered[src], out=region)

    def sample(self, label: int) -> np.ndarray:
        """One uint8 [32, 32, 3] tile whose cell holds a digit of class `label` (`BACKGROUND`: empty cell)."""
        from PIL import Image

        w = self.world
        n_cells = w.cells * w.cells
        cell = int(self.rng.randint(n_cells))
        canvas = np.zeros((w.canvas, w.canvas), dtype=np.uint8)
        for other in range(n_cells):
            if other != cell and self.rng.rand() < self.neighbour_p:
                self._place(canvas, int(self.rng.choice(self.pool)), other)
        if label != BACKGROUND:
            choices = self.by_class[label]
            self._place(canvas, int(choices[self.rng.randint(len(choices))]), cell)
        size = w.canvas / w.cells
        cy, cx = divmod(cell, w.cells)
        side = size * self.rng.uniform(*self.margin)
        centre_x = (cx + 0.5) * size + self.rng.uniform(-0.1, 0.1) * size
        centre_y = (cy + 0.5) * size + self.rng.uniform(-0.1, 0.1) * size
        box = np.clip([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], 0, w.canvas)
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[self.interpolation]
        out_size = DIGITS_MODEL_CFG["vision_cfg"]["image_size"]
        tile = Image.fromarray(canvas).convert("RGB").resize((out_size, out_size), resample, box=tuple(box))
        if self.rng.rand() < self.flip_p:
            tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(tile)


def _captions_tokens(tokenizer: Any, background: bool = False) -> torch.Tensor:
    captions = [CAPTION_TEMPLATE.format(name=name) for name in CLASSES]
    return tokenizer(captions + [BACKGROUND_CAPTION] if background else captions)


@torch.inference_mode()
def zero_shot_accuracy(model: Any, tokenizer: Any, pool: np.ndarray, seed: int, neighbour_p: float,
                       margin: tuple[float, float], flip_p: float = 0.0) -> float:
    """Zero-shot accuracy on every digit of `pool`, each shown as one tile (argmax over the 10 captions)."""
    _, targets = load_source_digits()
    sampler = TileSampler(np.asarray(pool), np.random.RandomState(seed), neighbour_p, margin, flip_p)
    labels = targets[pool]
    views = torch.from_numpy(np.stack([sampler.sample(int(c)) for c in labels]))
    model.eval()
    text = model.encode_text(_captions_tokens(tokenizer), normalize=True)
    image = model.encode_image(normalize_views(views, "clip"), normalize=True)
    pred = (image @ text.T).argmax(dim=1).numpy()
    return float((pred == labels).mean())


def fit_digits_teacher(cfg: DigitsFitCfg = DigitsFitCfg()) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the digits teacher from scratch (deterministic); return the model (eval mode) and metrics."""
    import open_clip

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        torch.manual_seed(cfg.seed)
        model = open_clip.CLIP(**DIGITS_MODEL_CFG)
        tokenizer = open_clip.SimpleTokenizer(context_length=DIGITS_MODEL_CFG["text_cfg"]["context_length"])
        tokens = _captions_tokens(tokenizer, background=True)
        pools = digit_pools()
        sampler = TileSampler(pools["teacher"], np.random.RandomState(cfg.seed), cfg.neighbour_p, cfg.margin,
                              cfg.flip_p)
        loss_fn = open_clip.ClipLoss()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def lr_at(step: int) -> float:
            if step < cfg.warmup:
                return (step + 1) / cfg.warmup
            return 0.5 * (1 + np.cos(np.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        n_cls = len(CLASSES) + 1  # a group: one tile per class and one empty tile, 11 distinct captions
        model.train()
        for step in range(cfg.steps):
            batch = np.stack([sampler.sample(c) for _ in range(cfg.groups) for c in range(n_cls)])
            image = model.encode_image(normalize_views(torch.from_numpy(batch), "clip"), normalize=True)
            text = model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
            # one ClipLoss per group of 10 distinct captions: image i of a group ↔ caption i
            loss = sum(loss_fn(image[g * n_cls : (g + 1) * n_cls], text, scale) for g in range(cfg.groups)) / cfg.groups
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            if step % 50 == 0 or step == cfg.steps - 1:
                log.info("digits teacher step %d/%d loss %.4f", step + 1, cfg.steps, loss.detach().item())
        fit_seconds = time.perf_counter() - start
        model.eval()
        test, tile = pools["test"], (1.0, 1.4)  # tiles of the default views: r_max = 0.2 on both sides
        acc = zero_shot_accuracy(model, tokenizer, test, cfg.eval_seed, 0.0, tile)
        acc_views = zero_shot_accuracy(model, tokenizer, test, cfg.eval_seed, cfg.neighbour_p, tile, 0.5)
        acc_train = zero_shot_accuracy(model, tokenizer, pools["teacher"], cfg.eval_seed, 0.0, tile)
    finally:
        torch.set_num_threads(threads)
    metrics = {
        "zero_shot_accuracy": acc,
        "zero_shot_accuracy_as_views": acc_views,
        "teacher_pool_accuracy": acc_train,
        "held_out": f"all {len(pools['test'])} digits of the test pool, one tile each (crop 1.0–1.4 cells); "
                    "as_views: with neighbours and random flips, as stage one shows them",
        "fit_seconds": round(fit_seconds, 1),
        "final_loss": loss.detach().item(),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "recipe": asdict(cfg),
        "recipe_hash": recipe_hash(cfg),
        "caption_template": CAPTION_TEMPLATE,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    return model, metrics


def save_teacher(model: torch.nn.Module, metrics: dict[str, Any], folder: Path) -> None:
    """Write an open_clip model folder (config, safetensors weights, metrics), atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = {"model_cfg": DIGITS_MODEL_CFG, "preprocess_cfg": DIGITS_PREPROCESS_CFG}
        (tmp / CONFIG_JSON).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / METRICS_JSON).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_digits_teacher(root: Path | None = None, force: bool = False) -> Path:
    """The cached digits teacher's folder; fit and cache it first if it is missing (or `force`)."""
    folder = teacher_dir(root)
    if is_cached(folder) and not force:
        return folder
    log.info("fitting the built-in digits teacher (once; cached in %s)", folder)
    model, metrics = fit_digits_teacher()
    save_teacher(model, metrics, folder)
    log.info(
        "digits teacher: zero-shot accuracy %.3f on held-out single digits, fitted in %.0f s",
        metrics["zero_shot_accuracy"], metrics["fit_seconds"],
    )
    if metrics["zero_shot_accuracy"] < MIN_ACCURACY:
        log.warning("digits teacher accuracy %.3f is below %.2f", metrics["zero_shot_accuracy"], MIN_ACCURACY)
    return folder
