"""The dataset registry: one `DatasetInfo` per source layout, each with its `prepare` function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.writer import PrepareReport
from mlpl.stages.registry import Registry, register_with


@dataclass(frozen=True)
class PrepareRequest:
    """Options of `mlpl prepare`, as typed values. A dataset rejects options it does not use."""

    out: Path
    root: Path | None = None
    regimes: tuple[str, ...] | None = None  # None: the dataset's `default_regimes`
    rows_per_shard: int = 1000
    skip_corrupt: bool = False
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific (e.g. digits: size)
    from_formatted: Path | None = None  # a folder of the literature's formatted_*.npy arrays
    images: Path | None = None  # with from_formatted: the folder their image paths are relative to


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    reference: str
    prepare: Callable[[PrepareRequest], PrepareReport]
    needs_root: bool = True
    options: tuple[str, ...] = ()  # dataset-specific option names it accepts
    card: str = ""  # data card file name under data_cards/
    class_list: str = ""  # shipped class-name list under stages/prepare/classnames/ ("" = built in)
    formatted_name: str = ""  # dataset.json name of an import of the literature's arrays ("" = not importable)
    layout: str = ""  # the source layout `--root` must point at, quoted in errors
    takes_images: bool = False  # reads its images from `--images` (a manifest) rather than `--root`
    default_regimes: tuple[str, ...] = ("full", "spml")  # simulated regimes written when --regime is not given


DATASETS: Registry[DatasetInfo] = Registry("dataset")
register_dataset = register_with(DATASETS, DatasetInfo, "prepare")
"""`@register_dataset(name=..., ...)` on a converter `prepare(req) -> PrepareReport` registers the dataset."""


def check_request(info: DatasetInfo, req: PrepareRequest) -> None:
    """Fail on a missing root or an option this dataset does not take, naming it."""
    if req.from_formatted is not None or (req.images is not None and not info.takes_images):
        _check_formatted_request(info, req)
        return
    if info.needs_root:
        layout = f": {info.layout}" if info.layout else ""
        if req.root is None:
            raise InputError(f"--root: dataset {info.name!r} needs --root pointing at its source layout{layout}")
        if not Path(req.root).is_dir():
            raise InputError(f"--root: {req.root} is not a folder; expected the {info.name} source layout{layout}")
    elif req.root is not None:
        where = "its images are under --images" if info.takes_images else "it is built in"
        raise InputError(f"--root: dataset {info.name!r} takes no --root ({where})")
    extra = sorted(k for k, v in req.options.items() if v is not None and k not in info.options)
    if extra:
        opts = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise InputError(f"{opts}: not an option of dataset {info.name!r} (it takes {list(info.options) or 'none'})")


def _check_formatted_request(info: DatasetInfo, req: PrepareRequest) -> None:
    if not info.formatted_name:
        importable = [i.name for i in DATASETS if i.formatted_name]
        raise InputError(f"--from-formatted: dataset {info.name!r} has no formatted arrays; "
                         f"importable datasets: {importable}")
    if req.from_formatted is None or req.images is None:
        raise InputError("--from-formatted and --images go together: the folder of formatted_*.npy arrays and "
                         "the folder their image paths are relative to")
    if req.root is not None:
        raise InputError("--root: not used with --from-formatted (the images folder is --images)")
    for option, path in (("--from-formatted", req.from_formatted), ("--images", req.images)):
        if not Path(path).is_dir():
            raise InputError(f"{option}: {path} is not a folder")
    extra = sorted(k for k, v in req.options.items() if v is not None)
    if extra:
        opts = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise InputError(f"{opts}: options of the {info.name} source layout, not of --from-formatted")


def prepare_dataset(name: str, req: PrepareRequest) -> PrepareReport:
    from mlpl.stages.prepare.observations import parse_regime

    info = DATASETS.get(name, option="--dataset")
    check_request(info, req)
    if req.regimes is None:
        req = replace(req, regimes=info.default_regimes)
    for spec in req.regimes:
        parse_regime(spec)
    if req.from_formatted is not None:
        from mlpl.stages.prepare.formatted import prepare_formatted

        return prepare_formatted(info, req)
    return info.prepare(req)


def _register_builtin() -> None:
    # One module per dataset; each registers itself when imported.
    import mlpl.stages.prepare.coco  # noqa: F401
    import mlpl.stages.prepare.cub  # noqa: F401
    import mlpl.stages.prepare.digits_dataset  # noqa: F401
    import mlpl.stages.prepare.manifest  # noqa: F401
    import mlpl.stages.prepare.nus  # noqa: F401
    import mlpl.stages.prepare.voc  # noqa: F401


_register_builtin()
