"""The dataset registry: one `DatasetInfo` per source layout, each with its `prepare` function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import InputError
from stages.prepare.writer import PrepareReport
from stages.registry import Registry


@dataclass(frozen=True)
class PrepareRequest:
    """Options of `mlpl prepare`, as typed values. A dataset rejects options it does not use."""

    out: Path
    root: Path | None = None
    regimes: tuple[str, ...] = ("full", "spml")
    rows_per_shard: int = 1000
    skip_corrupt: bool = False
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific (e.g. digits: size)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    reference: str
    prepare: Callable[[PrepareRequest], PrepareReport]
    needs_root: bool = True
    options: tuple[str, ...] = ()  # dataset-specific option names it accepts
    card: str = ""  # data card file name under data_cards/


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def check_request(info: DatasetInfo, req: PrepareRequest) -> None:
    """Fail on a missing root or an option this dataset does not take, naming it."""
    if info.needs_root:
        if req.root is None:
            raise InputError(f"--root: dataset {info.name!r} needs --root pointing at its source layout")
        if not Path(req.root).is_dir():
            raise InputError(f"--root: {req.root} is not a folder; expected the {info.name} source layout")
    elif req.root is not None:
        raise InputError(f"--root: dataset {info.name!r} is built in and takes no --root")
    extra = sorted(k for k, v in req.options.items() if v is not None and k not in info.options)
    if extra:
        opts = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise InputError(f"{opts}: not an option of dataset {info.name!r} (it takes {list(info.options) or 'none'})")


def prepare_dataset(name: str, req: PrepareRequest) -> PrepareReport:
    from stages.prepare.observations import parse_regime

    info = DATASETS.get(name, option="--dataset")
    check_request(info, req)
    for spec in req.regimes:
        parse_regime(spec)
    return info.prepare(req)


def _register_builtin() -> None:
    # One module per dataset; each registers itself when imported.
    import stages.prepare.digits_dataset  # noqa: F401


_register_builtin()
