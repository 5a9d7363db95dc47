"""Typed training configuration and method presets (TOML files shipped in `pipeline/presets/`).

Resolution order, later wins: `_defaults.toml` → its `[dataset.<family>]` table → the method's preset →
its `[dataset.<family>]` table → a user `--preset FILE` → CLI options. The result is a frozen
`TrainCfg`; an unknown key or a wrong type fails, naming the key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mlpl.schemas.errors import InputError
from mlpl.stages.families import FamilyInfo, family_entry, family_of_dataset_name, get_family_info, list_families
from mlpl.stages.registry import check_type
from mlpl.stages.train.config import TrainCfg

_FIELDS = {f.name: f for f in dataclasses.fields(TrainCfg)}
_PRESET_KEYS = set(_FIELDS) - {"method", "dataset", "out", "family"}
PRESET_KEYS = frozenset(_PRESET_KEYS)
"""Training settings a preset, `--set` or `--grid` may set."""


_HINTS = typing.get_type_hints(TrainCfg)


def _check_layer(d: dict[str, Any], where: str) -> dict[str, Any]:
    """One configuration layer checked against `TrainCfg` with the one type checker (`check_type`)."""
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; known keys: {sorted(_PRESET_KEYS)}")
    return {k: check_type(v, _HINTS[k], f"{where}: key {k!r}") for k, v in d.items()}


@dataclass(frozen=True)
class Overrides:
    """Settings given on the command line (the layer that wins), checked against `TrainCfg` when made.

    `Overrides.of(epochs=3, lr=None)` drops the options left unset; an unknown key or a wrong type is an
    `InputError` naming `where`. Nested tables (`loss_params`, ...) merge key by key into the presets'.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    where: str = "command line"

    def __post_init__(self) -> None:
        checked = _check_layer({k: v for k, v in self.values.items() if v is not None}, self.where)
        object.__setattr__(self, "values", MappingProxyType(checked))

    @classmethod
    def of(cls, **options: Any) -> Overrides:
        return cls(options)


def _merge(base: dict[str, Any], layer: dict[str, Any], where: str) -> dict[str, Any]:
    layer = _check_layer({k: v for k, v in layer.items() if k != "dataset"}, where)
    out = dict(base)
    for k, v in layer.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


DEFAULT_METHOD = "aevlp"
"""The method `mlpl train` uses without --method."""


def default_seeds(meta: Any) -> int:
    """Augment seeds of a store when --seeds is not given: one per epoch of the default method on the dataset's
    family (dynamic pseudo-labels), so that no epoch reads another epoch's views."""
    return resolve_train_cfg(DEFAULT_METHOD, "-", meta.name, "-", family=getattr(meta, "family", "")).epochs


def _family_table(layer: dict[str, Any], family: FamilyInfo, where: str) -> dict[str, Any]:
    """A preset's `[dataset.<family>]` table for `family` (its own, else that of `hyperparameters_from`)."""
    tables = layer.get("dataset", {})
    unknown = sorted(set(tables) - set(list_families()))
    if unknown:
        raise InputError(f"{where}: [dataset.{unknown[0]}] is not a hyperparameter family; expected one of "
                         f"{list_families()}")
    return dict(family_entry(tables, family))


def list_methods() -> list[str]:
    return sorted(p.name[:-5] for p in (resources.files("mlpl") / "presets").iterdir()
                  if p.name.endswith(".toml") and not p.name.startswith("_"))


def list_methods_matching(pattern: str) -> list[str]:
    """Method names matching a shell-style pattern (`ll-*`); an exact unknown name fails like `read_preset`."""
    import fnmatch

    names = [m for m in list_methods() if fnmatch.fnmatch(m, pattern)]
    if not names and not any(ch in pattern for ch in "*?["):
        read_preset(pattern)  # raises with the list of methods and a "did you mean"
    return names


_SHOWN_TRAIN_FIELDS = ("regime", "epochs", "batch_size", "lr", "head_lr_mult", "optimizer", "backbone",
                       "image_size", "early_stop", "threshold", "pseudo_mode")


def describe_method(method: str, families: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Everything a method binds, resolved per dataset family: training settings and the full typed configs of
    its loss, pseudo-labeller and label state (defaults included), as `mlpl methods` shows them.

    Args:
        families: the families to resolve (any registered one, `generic` included); None: every family with
            hyperparameters of its own.
    """
    from mlpl.stages.families import HYPERPARAMETER_FAMILIES
    from mlpl.stages.train.resolved import resolve_parts

    preset = read_preset(method)
    resolved: dict[str, Any] = {}
    for family in families or HYPERPARAMETER_FAMILIES:
        cfg = resolve_train_cfg(method, "-", "-", "-", family=family)
        parts = resolve_parts(cfg)  # the configs a run of this method on this family trains with
        resolved[family] = {
            **{k: getattr(cfg, k) for k in _SHOWN_TRAIN_FIELDS},
            **{f"{part}_params": dataclasses.asdict(getattr(parts, part))
               for part in ("loss", "pseudo", "label_state", "head")},
        }
    base = resolve_train_cfg(method, "-", "coco", "-")
    return {
        "name": method, "description": preset.get("description", ""), "reference": preset.get("reference", ""),
        "loss": base.loss, "pseudo": base.pseudo, "label_state": base.label_state, "head": base.head,
        "needs_store": base.needs_store, "families": resolved,
    }


def read_preset(method: str) -> dict[str, Any]:
    path = (resources.files("mlpl") / "presets") / f"{method}.toml"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(method, list_methods(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"--method: unknown method {method!r}. Available: {list_methods()}{hint}")
    return tomllib.loads(path.read_text())


def resolve_train_cfg(
    method: str,
    dataset: str,
    dataset_name: str,
    out: str,
    preset_file: Path | None = None,
    overrides: Overrides | Mapping[str, Any] | None = None,
    family: str = "",
) -> TrainCfg:
    """The run's config; `family` is the dataset's recorded hyperparameter family ("" for datasets that predate
    it: derived from `dataset_name`, and an unknown name is an error, never another dataset's settings)."""
    info = get_family_info(family or family_of_dataset_name(dataset_name, "--dataset"), option="family")
    family = info.name
    defaults = tomllib.loads(((resources.files("mlpl") / "presets") / "_defaults.toml").read_text())
    preset = read_preset(method)
    d: dict[str, Any] = {}
    d = _merge(d, defaults, "_defaults.toml")
    d = _merge(d, _family_table(defaults, info, "_defaults.toml"), f"_defaults.toml [dataset.{family}]")
    d = _merge(d, preset, f"{method}.toml")
    d = _merge(d, _family_table(preset, info, f"{method}.toml"), f"{method}.toml [dataset.{family}]")
    if preset_file is not None:
        try:
            user = tomllib.loads(Path(preset_file).read_text())
        except FileNotFoundError:
            raise InputError(f"--preset: {preset_file} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"--preset: {preset_file} is not valid TOML ({e})") from None
        d = _merge(d, user, str(preset_file))
        d = _merge(d, _family_table(user, info, str(preset_file)), f"{preset_file} [dataset.{family}]")
    if not isinstance(overrides, Overrides):
        overrides = Overrides(overrides or {})
    d = _merge(d, dict(overrides.values), overrides.where)
    cfg = TrainCfg(method=method, dataset=dataset, out=out, family=family, **d)
    data = cfg.data_cfg()  # recorded resolved: the backbone's own input config under the overrides
    cfg = dataclasses.replace(cfg, image_size=data.image_size, mean=data.mean, std=data.std,
                              interpolation=data.interpolation)
    return cfg
