"""A trained run as a self-contained model: weights plus `ModelMeta` (classes, preprocessing, thresholds).

`ProbabilityModel` is what `mlpl predict`, `mlpl.load(RUN).predict` and `mlpl export` all run: uint8 RGB
images resized to S×S in, sigmoid probabilities out, with the normalisation inside the module, so that an
exported model needs nothing but the decoding and resizing its metadata describes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.schemas.run import ModelMeta
from torch import nn

log = logging.getLogger(__name__)


class ProbabilityModel(nn.Module):
    """uint8 images [B, 3, S, S] → probabilities [B, C]: normalise (as training does), classify, sigmoid."""

    def __init__(self, classifier: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.classifier = classifier
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from mlpl.stages.pixels import normalize_uint8

        return torch.sigmoid(self.classifier(normalize_uint8(images, self.mean, self.std)).float())


def load_pixels(data: bytes, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Encoded image bytes → uint8 [3, size, size], decoded and resized as training and evaluation do."""
    from mlpl.stages.pixels import decode_uint8

    return resize_pixels(decode_uint8(data), size, interpolation)


def resize_pixels(image: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 [3, H, W] → uint8 [3, size, size], resized as training and evaluation do."""
    from mlpl.stages.pixels import resize_uint8

    return resize_uint8(image, size, interpolation).contiguous()


def _meta_from_config(run: Path, dataset: Path | None) -> ModelMeta:
    """Metadata of a run whose weights predate it: from its config.toml and its dataset's class names."""
    from mlpl.stages.train.predict import read_run_cfg, run_dataset

    cfg = read_run_cfg(run)
    ds = run_dataset(run, cfg, dataset)
    data = cfg.data_cfg()  # a config.toml without the resolved input config: the backbone's own
    return ModelMeta(classes=ds.meta.classes, image_size=data.image_size, mean=data.mean, std=data.std,
                     interpolation=data.interpolation, backbone=cfg.backbone, head=cfg.head,
                     head_params=dict(cfg.head_params), family=cfg.family, threshold=cfg.threshold, method=cfg.method,
                     dataset=ds.meta.name, dataset_fingerprint=ds.meta.fingerprint)


@dataclass
class Predictions:
    """Probabilities of a list of images, and the labels the thresholds (and top-k) select."""

    images: list[str]
    probabilities: np.ndarray  # float32 [n, C]
    classes: tuple[str, ...]
    thresholds: list[float]
    top_k: int | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (image, reason) of images not decoded

    @property
    def labels(self) -> list[list[str]]:
        """The predicted class names of each image: above its class's threshold, at most `top_k`, most probable
        first."""
        chosen = select_labels(self.probabilities, self.thresholds, self.top_k)
        return [[self.classes[c] for c in row] for row in chosen]


def select_labels(probs: np.ndarray, thresholds: list[float], top_k: int | None) -> list[list[int]]:
    """Per row, the classes with probability ≥ their threshold, most probable first, at most `top_k` of them."""
    above = probs >= np.asarray(thresholds, dtype=np.float32)[None, :]
    order = np.argsort(-probs, axis=1, kind="stable")
    out = []
    for i in range(len(probs)):
        row = [int(c) for c in order[i] if above[i, c]]
        out.append(row[:top_k] if top_k else row)
    return out


class LoadedRun:
    """A run's best weights with their metadata, ready to predict (`mlpl.load(RUN)`)."""

    def __init__(self, run: Path, meta: ModelMeta, model: ProbabilityModel, device: torch.device) -> None:
        self.run, self.meta, self.model, self.device = Path(run), meta, model, device

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    def with_thresholds(self, thresholds: list[float], rule: str) -> LoadedRun:
        meta = replace(self.meta, thresholds=tuple(float(t) for t in thresholds), threshold_rule=rule)
        return LoadedRun(self.run, meta, self.model, self.device)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities [B, C] of a uint8 batch [B, 3, S, S]."""
        return self.model(batch.to(self.device)).cpu().numpy()

    def predict(self, images: list[Any], batch_size: int = 32, threshold: float | None = None,
                top_k: int | None = None) -> Predictions:
        """Probabilities and labels of images given as paths, encoded bytes, PIL images or uint8 HWC arrays.

        An image that cannot be read is left out and listed in `Predictions.unreadable`.
        """
        from mlpl.schemas.images import DECODE_ERRORS

        names, pixels, unreadable = [], [], []
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, Path)) else f"<image {i}>"
            try:
                pixels.append(self._pixels(image))
                names.append(name)
            except InputError:
                raise  # not an image at all: the caller's mistake, not a damaged file
            except DECODE_ERRORS as e:
                unreadable.append((name, f"{e.__class__.__name__}: {e}"))
        probs = [self.probabilities(torch.stack(pixels[s : s + batch_size]))
                 for s in range(0, len(pixels), batch_size)]
        C = len(self.classes)
        thresholds = self.meta.class_thresholds() if threshold is None else [threshold] * C
        return Predictions(names, np.concatenate(probs) if probs else np.zeros((0, C), np.float32), self.classes,
                           thresholds, top_k, unreadable)

    def _pixels(self, image: Any) -> torch.Tensor:
        from PIL import Image

        size, interp = self.meta.image_size, self.meta.interpolation
        if isinstance(image, (str, Path)):
            return load_pixels(Path(image).read_bytes(), size, interp)
        if isinstance(image, bytes):
            return load_pixels(image, size, interp)
        if isinstance(image, Image.Image):
            from mlpl.schemas.images import to_rgb

            return self._pixels(np.array(to_rgb(image), dtype=np.uint8))
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return resize_pixels(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), size, interp)
        raise InputError(f"images: {type(image).__name__} is not an image; expected a path, encoded bytes, a PIL "
                         "image or a uint8 array [H, W, 3]")


def load_run(run: Path, device: str | None = "cpu", dataset: Path | None = None) -> LoadedRun:
    """A run folder's best weights and metadata; only best.safetensors is needed when it carries the metadata
    (runs trained before that read config.toml and their dataset's class names, `dataset` overriding its path)."""
    from mlpl.stages.runtime import pick_device
    from mlpl.stages.train.models import create_classifier
    from safetensors.torch import load_file

    run = Path(run)
    weights = run / run_schema.BEST_WEIGHTS
    if not weights.is_file():
        raise InputError(f"{weights}: missing; expected a run folder written by `mlpl train` (with its best weights)")
    meta = run_schema.read_model_meta(weights) or _meta_from_config(run, dataset)
    classifier, _ = create_classifier(meta.backbone, len(meta.classes), pretrained=False, head=meta.head,
                                      head_params=meta.head_params, family=meta.family, image_size=meta.image_size)
    try:
        classifier.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise InputError(f"{weights}: does not fit backbone {meta.backbone!r} with head {meta.head!r} ({e})") from None
    dev = pick_device(device)
    model = ProbabilityModel(classifier, meta.mean, meta.std).to(dev).eval()
    return LoadedRun(run, meta, model, dev)
