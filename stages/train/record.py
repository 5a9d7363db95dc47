"""A run's `config.toml`: every value the run used after resolution, checked against the folder before any write.

Besides the training settings it holds the typed configs of the loss, pseudo-labeller, label state and head
(defaults and per-family values filled in), the optimiser and learning rates, augmentation, image size and
normalisation, world size and global batch, the prepared dataset's identity, the store's teacher and view
attributes, and the mlpl version and source commit. A run folder whose record differs (provenance and loggers aside) is
refused naming the differing keys, and nothing in it is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from mlpl.schemas import run as run_schema
from mlpl.schemas.errors import InputError
from mlpl.schemas.run import flatten_config as flatten

log = logging.getLogger(__name__)

UNCOMPARED_KEYS = frozenset({"out", "dataset", "pseudo_store", "description", "reference", "loggers",
                             "run.mlpl_version", "run.source_commit"})
"""Keys that say where a run, its dataset and store are or where it logs, not what it computes: a resume may
differ in them (the dataset's fingerprint and the store's attributes are compared: they say what the data is)."""
DESCRIPTIVE = ("run.", "dataset_info.", "store_info.", "description", "reference")
"""Key prefixes that describe a run's surroundings rather than set it (left out of loggers' hparams)."""


def mlpl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlpl-scarce")
    except PackageNotFoundError:
        return "unknown"


def source_commit() -> str | None:
    """The git commit of the source tree mlpl runs from, when it is a git checkout (None otherwise)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        found = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                               timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def check_run(cfg: Any, expected_positives: float | None = None) -> Any:
    """Every check a run's configuration gets before its folder is touched: its parts resolve and fit together
    (`resolve_parts`) and its loggers are available. Returns the resolved parts."""
    from mlpl.stages.train.loggers import check_loggers
    from mlpl.stages.train.resolved import resolve_parts

    check_loggers(cfg.loggers)
    return resolve_parts(cfg, expected_positives)


def build_record(cfg: Any, parts: dict[str, Any], dataset_meta: Any, store_attrs: dict[str, Any] | None,
                 world: int, run: dict[str, Any]) -> dict[str, Any]:
    """The nested dict written as `config.toml`.

    Args:
        cfg: the run's `TrainCfg`.
        parts: `config.toml` tables of the resolved typed configs (`[resolved]`, `mlpl.stages.train.resolved`).
        dataset_meta: the prepared dataset's `DatasetMeta`.
        store_attrs: the store's attributes when the run reads a store.
        world: processes taking part (global batch = batch_size × world).
        run: optimiser, learning rates, augmentation and normalisation as the loop uses them.
    """
    record = {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}
    record.update({k: _plain(v) for k, v in parts.items()})
    record["run"] = {**_plain(run), "world_size": world, "global_batch": cfg.batch_size * world,
                     "mlpl_version": mlpl_version()}
    commit = source_commit()
    if commit:
        record["run"]["source_commit"] = commit
    record["dataset_info"] = {"name": dataset_meta.name, "fingerprint": dataset_meta.fingerprint,
                              "classes": len(dataset_meta.classes), "splits": dict(dataset_meta.splits)}
    if store_attrs is not None:
        record["store_info"] = {k: _plain(store_attrs[k]) for k in ("teacher", "views", "seeds", "dataset_fingerprint")
                                if k in store_attrs}
    return record


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two records as TOML stores them, provenance and loggers aside.

    A training setting added after `old` was written is absent from it: it differs only when `new` holds
    another value than the setting's default (which is what the older run used)."""
    from mlpl.stages.train.config import TrainCfg

    defaults = flatten(tomllib.loads(run_schema.dump_toml(
        {f.name: _plain(f.default) for f in dataclasses.fields(TrainCfg)
         if f.default is not dataclasses.MISSING and f.default is not None})))
    a = flatten(tomllib.loads(run_schema.dump_toml(old)))
    b = flatten(tomllib.loads(run_schema.dump_toml(new)))
    return sorted(k for k in set(a) | set(b) if k not in UNCOMPARED_KEYS and a.get(k) != b.get(k)
                  and not (k not in a and k in defaults and b.get(k) == defaults[k]))


def check_folder(out: Path, record: dict[str, Any]) -> bool:
    """Whether `out` holds a finished run of this record; raises (touching nothing) if it holds another run.

    Returns:
        True: finished (its `summary.json` stands); False: new or resumable.
    """
    path = Path(out) / run_schema.CONFIG_TOML
    if not path.exists():
        if (Path(out) / run_schema.LAST_STATE).exists() or (Path(out) / run_schema.SUMMARY_JSON).exists():
            raise InputError(f"{out}: holds a run without {run_schema.CONFIG_TOML}; choose another --out")
        return False
    try:
        old = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e}); choose another --out") from None
    if "run" not in old:  # a record from before runs recorded everything: check what it holds
        log.warning("%s: an older run record; checking only the keys it holds", path)
        record = {k: v for k, v in record.items() if k in old}
    differing = differing_keys(old, record)
    if differing:
        shown = ", ".join(f"{k} ({flatten(old).get(k)!r} → {flatten(record).get(k)!r})" for k in differing[:6])
        more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
        raise InputError(f"{out}: holds a run with another configuration, differing in {shown}{more}; "
                         "choose another --out (nothing was changed)")
    return (Path(out) / run_schema.SUMMARY_JSON).exists()


def write_record(out: Path, record: dict[str, Any]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(out) / (run_schema.CONFIG_TOML + ".tmp")
    tmp.write_text(run_schema.dump_toml(record))
    tmp.replace(Path(out) / run_schema.CONFIG_TOML)
