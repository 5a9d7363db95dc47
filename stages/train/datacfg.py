"""The input a backbone expects (side, per-channel mean/std, resize filter): one frozen `DataCfg` per run.

It is resolved once from the backbone's own pretrained configuration (timm's data config, open_clip's
preprocessing, the literature's settings for the torchvision ResNets), overridden by `--image-size`,
`--mean` and `--std`, and recorded in the run's `config.toml`. The stream resizes to `image_size` with
`interpolation`; whoever normalises the images takes `mean`/`std` from here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlpl.schemas.errors import InputError
from mlpl.stages.runtime import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "DataCfg", "parse_channels"]

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")  # the filters mlpl.stages.pixels resamples with


@dataclass(frozen=True)
class DataCfg:
    """What the backbone's weights were trained to see.

    Attributes:
        image_size: side of the square input in pixels.
        mean: per-channel (RGB) mean of images scaled to [0, 1].
        std: per-channel (RGB) standard deviation, all > 0.
        interpolation: resize filter, one of `INTERPOLATIONS`.
    """

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise InputError(f"--image-size must be an integer ≥ 8, got {self.image_size!r}")
        object.__setattr__(self, "mean", _three_numbers(self.mean, "--mean"))
        object.__setattr__(self, "std", _three_numbers(self.std, "--std"))
        if not all(s > 0 for s in self.std):
            raise InputError(f"--std must be three numbers > 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation {self.interpolation!r}: expected one of {list(INTERPOLATIONS)}")

    def with_overrides(self, image_size: int | None = None, mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None, interpolation: str | None = None) -> DataCfg:
        """This config with the given (non-None) fields replaced."""
        return DataCfg(image_size=self.image_size if image_size is None else image_size,
                       mean=self.mean if mean is None else mean, std=self.std if std is None else std,
                       interpolation=self.interpolation if interpolation is None else interpolation)


def _three_numbers(value: object, option: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        return parse_channels(value, option)
    try:
        out = tuple(float(v) for v in value if not isinstance(v, bool))  # type: ignore[union-attr]
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or len(out) != len(value) or not all(math.isfinite(v) for v in out):  # type: ignore[arg-type]
        raise InputError(f"{option} must be three numbers (R, G, B), got {value!r}")
    return out  # type: ignore[return-value]


def parse_channels(text: str, option: str) -> tuple[float, float, float]:
    """Three per-channel numbers from `'0.5,0.5,0.5'` (commas or spaces); a clear error otherwise."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or len(parts) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{option} {text!r}: expected three numbers (R, G, B) such as '0.485,0.456,0.406'")
    return values  # type: ignore[return-value]
