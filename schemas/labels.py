"""Label meanings as explicit enums: observed labels, pseudo-labels and splits."""

from __future__ import annotations

import enum


class Observed(enum.IntEnum):
    """An observed (weak) label cell, as stored in `observations/<regime>.parquet` and fed to losses."""

    POSITIVE = 1
    UNKNOWN = 0
    NEGATIVE = -1


class Pseudo(enum.IntEnum):
    """A pseudo-label cell produced by a pseudo-labeller."""

    POSITIVE = 1
    UNDEFINED = 0
    NEGATIVE = -1


class Split(str, enum.Enum):  # noqa: UP042  (str() and format() stay "Split.TRAIN")
    """Row splits. `train` and `val` together form the source's official training split."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


SPLITS: tuple[str, ...] = tuple(s.value for s in Split)
