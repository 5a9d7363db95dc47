"""Per-image learnable label state (ROLE, EM-APL, LL-Cp, CDUL, PLMCL, G2NetPL): a registry and the hooks
the training loop calls.

A label state owns [N, C] tables indexed by a training row's position `r = row − first train row`
(0..N−1), saved with the run in `last.pt` and restored on resume. Within one training step the loop calls,
in this order:

    observed = state.observed_for(rows, observed)     # e.g. LL-Cp's permanent positives
    logits   = model(images)
    view     = state.batch_state(rows, device)         # [B, C] tensors handed to the loss as `state=`
    out      = loss(..., state=view)                  # only a loss whose `LossInfo.label_state` names it
    out.total.backward(); optimiser.step()
    state.after_step(rows=rows, logits=logits.detach(), observed=observed, out=out, epoch=epoch)

and after each epoch, `end_epoch(epoch, rows, probs)` (with the predictions of every training image when
`wants_train_predictions(epoch)` is True, else None). Parameters the optimiser trains (ROLE's estimator)
come from `param_groups(lr)`. Hooks a method does not need keep the base class's no-op.

Under `torchrun` each rank sees other rows each epoch; `RowTable`s are made consistent after each epoch by
`synchronise()` (every row is updated by exactly one rank per epoch, so the sum of per-rank changes is exact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from mlpl.schemas.store import TeacherAttrs, ViewAttrs
from mlpl.stages.families import FamilyInfo, build_cfg, check_family_table
from mlpl.stages.registry import Registry, register_with
from mlpl.stages.train.losses import EpochState, LossOutput

SimsReader = Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]]
"""`read(seed_index)` yields (local rows [n], raw similarities [n, V, C] float32) over every training row
(`mlpl.schemas.store.Store.seed_chunks` in a run)."""


LABEL_STATES: Registry[LabelStateInfo] = Registry("label state")


@dataclass(frozen=True)
class LabelStateContext:
    """What a label state is built from.

    Attributes:
        observed: [N, C] int8 `Observed` values of the training rows (the run's regime).
        family: the dataset's hyperparameter family (stages/families.py), or its name.
        seed: the run's seed (every random initialisation draws from it).
        device: the training device (states holding trainable parameters put them there).
        read_sims: the store's similarities, when the run has a store; None otherwise.
        store_attrs: the store's attributes (`mlpl.schemas.store.StoreAttrs.to_dict()`), or None.
        store_path: the store's folder (for messages), or None.
        num_epochs: planned epochs T.
    """

    observed: np.ndarray
    family: FamilyInfo | str
    seed: int
    device: torch.device
    read_sims: SimsReader | None = None
    store_attrs: Mapping[str, Any] | None = None
    num_epochs: int = 1
    store_path: str | None = None

    @property
    def num_rows(self) -> int:
        return int(self.observed.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.observed.shape[1])

    @property
    def store_views(self) -> ViewAttrs | None:
        """The store's view settings, typed (None without a store)."""
        return None if self.store_attrs is None else ViewAttrs.from_dict(self.store_attrs["views"], self.store_where)

    @property
    def store_teacher(self) -> TeacherAttrs | None:
        """The store's teacher, typed (None without a store)."""
        return None if self.store_attrs is None else TeacherAttrs.from_dict(self.store_attrs.get("teacher") or {})

    @property
    def store_where(self) -> str:
        return f"the store {self.store_path}" if self.store_path else "the store"


class RowTable:
    """An [N, C] per-row table kept on the CPU in a storage dtype (float16 where a method's precision allows:
    a NUS-WIDE table is 150,000 × 81 × 2 bytes = 24 MB), read and written by rows in float32.

    `sync` says how ranks combine their changes after an epoch: "delta" (sum of changes; rows are disjoint
    per rank) or "max" (e.g. flags that only ever turn on).
    """

    def __init__(self, values: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32,
                 sync: str = "delta") -> None:
        if sync not in ("delta", "max"):
            raise ValueError(f"RowTable sync must be 'delta' or 'max', got {sync!r}")
        self.data = torch.as_tensor(np.asarray(values)).to(dtype).clone()
        self.sync = sync
        self._snapshot: torch.Tensor | None = None

    def __getitem__(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.data[torch.as_tensor(rows, dtype=torch.long)].float()

    def __setitem__(self, rows: torch.Tensor | np.ndarray, values: torch.Tensor) -> None:
        self.data[torch.as_tensor(rows, dtype=torch.long)] = values.detach().to("cpu", self.data.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def numpy(self) -> np.ndarray:
        return self.data.float().numpy()

    def begin_epoch(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._snapshot = self.data.clone()

    def synchronise(self) -> None:
        """Combine the ranks' changes of this epoch (a no-op without `torch.distributed`)."""
        if self._snapshot is None:
            return
        dist = torch.distributed
        # NCCL reduces device tensors only: the tables live on the CPU, so they travel for the collective
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        if self.sync == "max":
            merged = self.data.float().to(device)
            dist.all_reduce(merged, op=dist.ReduceOp.MAX)
        else:
            delta = (self.data.float() - self._snapshot.float()).to(device)
            dist.all_reduce(delta, op=dist.ReduceOp.SUM)
            merged = self._snapshot.float() + delta.cpu()
        self.data.copy_(merged.cpu().to(self.data.dtype))
        self._snapshot = None


class LabelState:
    """Base class: no state, every hook a no-op. Subclasses keep their tables in `self.tables` (name →
    `RowTable`) so that saving, resuming and synchronising need no code of their own."""

    def __init__(self, ctx: LabelStateContext, cfg: Any) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.tables: dict[str, RowTable] = {}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Extra optimiser groups (trainable per-row parameters); `lr` is the network's base lr."""
        return []

    def observed_for(self, rows: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """The observed labels the loss sees for `rows` ([B] local rows, observed [B, C] on the CPU)."""
        return observed

    def batch_state(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The [B, C] tensors a loss of this state reads (`state=` keyword)."""
        return {}

    def after_step(self, *, rows: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, out: LossOutput,
                   epoch: EpochState) -> None:
        """Update the state after the network's optimiser step (`logits` detached, on the training device)."""

    def wants_train_predictions(self, epoch: EpochState) -> bool:
        """True when `end_epoch` needs the network's predictions of every training image."""
        return False

    def end_epoch(self, *, epoch: EpochState, rows: np.ndarray | None, probs: np.ndarray | None) -> dict[str, float]:
        """Update the state after an epoch; returns numbers to log in `metrics.jsonl` (train record)."""
        return {}

    def labels(self) -> np.ndarray | None:
        """The current per-row soft labels [N, C] in [0, 1] (for reports and pseudo-label quality), if any."""
        return None

    # ---------------------------------------------------------------- bookkeeping shared by every state
    def begin_epoch(self) -> None:
        for table in self.tables.values():
            table.begin_epoch()

    def synchronise(self) -> None:
        for table in self.tables.values():
            table.synchronise()

    def state_dict(self) -> dict[str, Any]:
        return {name: table.data for name, table in self.tables.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted(set(self.tables) - set(state))
        if missing:
            raise ValueError(f"label state {type(self).__name__}: saved state lacks tables {missing}")
        for name, table in self.tables.items():
            table.data.copy_(torch.as_tensor(state[name]))

    def memory_bytes(self) -> int:
        return sum(t.data.numel() * t.data.element_size() for t in self.tables.values())


@dataclass(frozen=True)
class LabelStateInfo:
    """A registered label state.

    Attributes:
        name: registry name (`label_state` in presets).
        description: one line.
        reference: paper and docs/methods.md section.
        create: `create(ctx, cfg) -> LabelState`.
        cfg_cls: frozen dataclass of its hyperparameters; fields without a default are per-dataset.
        dataset_defaults: family → field values.
        uses_sims: True if it initialises from the store (the run then needs `--pseudo-store`); or a function
            of its config saying so (a state that starts from the teacher only under some settings).
    """

    name: str
    description: str
    reference: str
    create: Callable[[LabelStateContext, Any], LabelState]
    cfg_cls: type
    dataset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    uses_sims: bool | Callable[[Any], bool] = False

    def __post_init__(self) -> None:
        check_family_table(self.dataset_defaults, f"label state {self.name!r}")

    def reads_store(self, cfg: Any) -> bool:
        """Whether a run with this config of the state needs the store."""
        return bool(self.uses_sims(cfg) if callable(self.uses_sims) else self.uses_sims)


@dataclass(frozen=True)
class NoStateCfg:
    """`none` has no parameters."""


register_label_state = register_with(LABEL_STATES, LabelStateInfo, "create")
"""`@register_label_state(name=..., ...)` on a `LabelState` class (built as `cls(ctx, cfg)`) registers it."""

register_label_state(name="none", description="no per-image label state", reference="-", cfg_cls=NoStateCfg)(LabelState)


def get_label_state_info(name: str) -> LabelStateInfo:
    return LABEL_STATES.get(name, option="label_state")


def create_label_state_cfg(name: str, family: FamilyInfo | str | None, overrides: Mapping[str, Any]) -> Any:
    """The frozen config of label state `name`: class defaults, the family's, then `overrides`."""
    info = get_label_state_info(name)
    return build_cfg(info.cfg_cls, f"label state {name!r}", info.dataset_defaults, family, overrides)


def create_label_state(name: str, ctx: LabelStateContext, overrides: Mapping[str, Any]) -> LabelState:
    """Build label state `name` for a run (its config from `create_label_state_cfg`)."""
    return get_label_state_info(name).create(ctx, create_label_state_cfg(name, ctx.family, overrides))


def _register_builtin() -> None:
    # One module per family; each registers its states when imported. (Modules are added as methods land.)
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_builtin()
