"""Registers the built-in `digits` world as a dataset of `mlpl prepare`."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields

from mlpl.schemas.errors import InputError
from mlpl.stages import digits
from mlpl.stages.prepare.datasets import PrepareRequest, register_dataset
from mlpl.stages.prepare.observations import write_regimes
from mlpl.stages.prepare.writer import PrepareReport, SourceImage, write_prepared

_OPTIONS = tuple(f.name for f in fields(digits.DigitsCfg))


def _const(data: bytes):
    return lambda: data


@register_dataset(
        name="digits",
        description="built-in world: 1–4 of scikit-learn's handwritten digits per canvas (no download)",
        reference="UCI optical recognition of handwritten digits (scikit-learn's load_digits)",
        needs_root=False,
        options=_OPTIONS,
        card="digits.md",
    )
def prepare_digits(req: PrepareRequest) -> PrepareReport:
    cfg = digits.DigitsCfg(**{k: v for k, v in req.options.items() if v is not None})
    if cfg.size < 10 or cfg.test_size < 1:
        raise InputError(f"--size/--test-size: need size ≥ 10 and test size ≥ 1, got {cfg.size}/{cfg.test_size}")
    if not 1 <= cfg.min_digits <= cfg.max_digits <= min(len(digits.CLASSES), cfg.cells**2):
        raise InputError("--min-digits/--max-digits: need 1 ≤ min ≤ max ≤ min(10, cells²)")
    if cfg.digit > cfg.canvas // cfg.cells + 1:
        raise InputError(f"--digit: {cfg.digit} px does not fit a cell of {cfg.canvas // cfg.cells} px")
    splits = digits.generate(cfg)
    # keys name the generator settings, so canvases of different worlds never share a key
    tag = hashlib.sha256(repr(sorted(asdict(cfg).items())).encode()).hexdigest()[:8]
    items = {
        split: [
            SourceImage(key=f"{tag}-{split}-{i:06d}", labels=labels, ext="png", read=_const(png),
                        origin=f"digits:{split}:{i}")
            for i, (png, labels) in enumerate(rows)
        ]
        for split, rows in splits.items()
    }
    return write_prepared(
        req.out,
        name="digits",
        classes=digits.CLASSES,
        train=items["train"],
        test=items["test"],
        source={"generator": "digits", **asdict(cfg), "pool_seed": digits.POOL_SEED},
        rows_per_shard=req.rows_per_shard,
        overwrite=req.overwrite,
        after_write=lambda tmp, meta, table: write_regimes(tmp, table, req.regimes),
    )


