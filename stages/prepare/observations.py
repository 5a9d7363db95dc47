"""Observation regimes (docs/methods.md §1.2–1.4): which cells of the train split's labels a method may see.

A regime is named by a spec string that is also its file name under `observations/`:
`full`, `none`, `spml` (= `spml-seed1200`), `partial-0.5` (seed 0; `partial-0.5-seed3`),
`spml-unlabeled-0.7` (70% of images with no label; seed 0; `spml-unlabeled-0.7-seed3`).
Every regime is drawn over the source's whole official train split (train ∪ val) in source order,
before the validation hold-out, and then restricted to the train rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.dataset import LabelsTable, Observations, write_observations
from mlpl.schemas.errors import InputError
from mlpl.schemas.labels import Observed
from mlpl.stages.registry import Registry

SPML_SEED = 1200


@dataclass(frozen=True)
class RegimeInfo:
    name: str
    description: str
    reference: str
    pattern: str  # regular expression over the spec string; named groups are parameters
    build: Callable[[np.ndarray, dict[str, Any]], np.ndarray]  # full labels {0,1} [N, C] → Observed [N, C]
    defaults: dict[str, Any]
    example: str


REGIMES: Registry[RegimeInfo] = Registry("observation regime")


def single_positive(labels: np.ndarray, seed: int = SPML_SEED) -> np.ndarray:
    """docs/methods.md §1.2, bit-exact: a fresh RandomState, one positive kept per row, negatives shuffled anyway."""
    rng = np.random.RandomState(seed)
    obs = np.zeros(labels.shape, dtype=np.int8)
    for i, y in enumerate(labels):
        pos = np.nonzero(y == 1)[0]
        rng.shuffle(pos)
        obs[i, pos[:1]] = Observed.POSITIVE
        neg = np.nonzero(y == 0)[0]
        rng.shuffle(neg)  # consumes random numbers exactly as the reference does
    return obs


def partial(labels: np.ndarray, ratio: float, seed: int = 0) -> np.ndarray:
    """docs/methods.md §1.4: keep each cell of the ±1 matrix independently with probability `ratio`."""
    signed = np.where(labels == 1, Observed.POSITIVE, Observed.NEGATIVE).astype(np.int8)
    mask = np.random.RandomState(seed).random_sample(labels.shape) < ratio
    return np.where(mask, signed, Observed.UNKNOWN).astype(np.int8)


def single_positive_unlabeled(labels: np.ndarray, unlabeled: float, seed: int = 0) -> np.ndarray:
    """PLMCL's setting: single positives (1.2), then a fraction `unlabeled` of images loses its label."""
    obs = single_positive(labels)
    n_unlabeled = int(round(unlabeled * len(labels)))
    drop = np.random.RandomState(seed).permutation(len(labels))[:n_unlabeled]
    obs[drop] = Observed.UNKNOWN
    return obs


def _given(labels: np.ndarray, _: dict[str, Any]) -> np.ndarray:
    raise InputError("--regime given: the observed labels a manifest states (its positives and negatives "
                     "columns); written by `mlpl prepare --dataset manifest`, never simulated from full labels")


def _full(labels: np.ndarray, _: dict[str, Any]) -> np.ndarray:
    return np.where(labels == 1, Observed.POSITIVE, Observed.NEGATIVE).astype(np.int8)


def _none(labels: np.ndarray, _: dict[str, Any]) -> np.ndarray:
    return np.zeros(labels.shape, dtype=np.int8)


_FLOAT = r"(?:0(?:\.\d+)?|1(?:\.0+)?)"
for _info in (
    RegimeInfo("full", "every label observed (upper bound)", "—", r"full", _full, {}, "full"),
    RegimeInfo("given", "the observed labels a manifest states (a user's own weak labels)", "docs/own-data.md",
               r"given", _given, {}, "given"),
    RegimeInfo("none", "no label observed (unsupervised; CDUL)", "docs/methods.md §1.4", r"none", _none, {}, "none"),
    RegimeInfo(
        "spml", "one observed positive per image, bit-exact with the literature", "docs/methods.md §1.2",
        r"spml(?:-seed(?P<seed>\d+))?", lambda y, p: single_positive(y, p["seed"]), {"seed": SPML_SEED}, "spml",
    ),
    RegimeInfo(
        "partial", "each label kept with probability ρ (positives and negatives)", "docs/methods.md §1.4",
        rf"partial-(?P<ratio>{_FLOAT})(?:-seed(?P<seed>\d+))?", lambda y, p: partial(y, p["ratio"], p["seed"]),
        {"seed": 0}, "partial-0.5",
    ),
    RegimeInfo(
        "spml-unlabeled", "single positive, with a fraction of images left with no label", 
        "docs/methods.md §1.4 (PLMCL)",
        rf"spml-unlabeled-(?P<unlabeled>{_FLOAT})(?:-seed(?P<seed>\d+))?",
        lambda y, p: single_positive_unlabeled(y, p["unlabeled"], p["seed"]), {"seed": 0}, "spml-unlabeled-0.5",
    ),
):
    REGIMES.register(_info)


def parse_regime(spec: str) -> tuple[RegimeInfo, dict[str, Any]]:
    """'partial-0.3-seed2' → (partial's info, {'ratio': 0.3, 'seed': 2}); a bad spec names the forms."""
    for info in REGIMES:
        m = re.fullmatch(info.pattern, spec)
        if m:
            params = dict(info.defaults)
            for k, v in m.groupdict().items():
                if v is not None:
                    params[k] = int(v) if k == "seed" else float(v)
            return info, params
    forms = ", ".join(i.example for i in REGIMES)
    raise InputError(f"--regime: unknown observation regime {spec!r}; expected one of the forms {forms} "
                     "(optionally with -seedN)")


def official_train_labels(table: LabelsTable) -> tuple[np.ndarray, np.ndarray]:
    """(rows of train ∪ val in source order, their full labels [N, C])."""
    mask = np.isin(table.split, ("train", "val"))
    rows = table.row[mask][np.argsort(table.source_index[mask], kind="stable")]
    return rows, table.matrix(rows)


def build_observations(table: LabelsTable, spec: str) -> Observations:
    info, params = parse_regime(spec)
    unknown = table.describe_unknown(table.row[np.isin(table.split, ("train", "val"))])
    if unknown:
        raise InputError(f"--regime {spec}: simulated from the train rows' full labels, but this dataset has "
                         f"{unknown}; its observed labels as given are the regime {'given'!r}")
    rows, labels = official_train_labels(table)
    obs = info.build(labels, params)
    keep = table.split[rows] == "train"
    order = np.argsort(rows[keep])
    return Observations.from_matrix(spec, {"regime": info.name, **params}, rows[keep][order], obs[keep][order])


def write_regimes(root: Path, table: LabelsTable, specs: Sequence[str]) -> list[Path]:
    for spec in specs:
        parse_regime(spec)  # fail on a bad name before writing anything
    return [write_observations(root, build_observations(table, spec)) for spec in specs]
