"""The label-state layer: per-row tables (storage dtype, save/load, cross-rank synchronisation) and its registry."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from mlpl.schemas.errors import InputError
from mlpl.stages.train.labelstate import (
    LABEL_STATES,
    LabelState,
    LabelStateContext,
    RowTable,
    create_label_state,
    create_label_state_cfg,
)

from tests.conftest import free_port


def test_row_table_reads_float32_and_stores_its_dtype():
    table = RowTable(np.full((4, 3), 0.5, np.float32), dtype=torch.float16)
    assert table.data.dtype == torch.float16 and table.shape == (4, 3)
    table[torch.tensor([1, 3])] = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, 0.25]], dtype=torch.float64)
    got = table[np.array([3, 1])]
    assert got.dtype == torch.float32
    # float16 keeps 0.25/1.0/0 exactly and 0.1 to ~1e-4
    assert got[0].tolist() == [1.0, 0.0, 0.25]
    assert got[1].tolist() == pytest.approx([0.1, 0.2, 0.3], abs=1e-3)
    assert table[[0]].tolist() == [[0.5, 0.5, 0.5]]


def test_row_table_sync_mode_is_checked():
    with pytest.raises(ValueError, match="delta"):
        RowTable(np.zeros((1, 1)), sync="mean")


def _sync_worker(rank: int, world: int, port: int, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start = np.arange(12, dtype=np.float32).reshape(4, 3)
        delta = RowTable(start)
        flags = RowTable(np.zeros((4, 3), np.int8), dtype=torch.int8, sync="max")
        delta.begin_epoch()
        flags.begin_epoch()
        rows = torch.tensor([0, 2]) if rank == 0 else torch.tensor([1, 3])  # disjoint rows per rank
        delta[rows] = delta[rows] + 100 * (rank + 1)
        flags[rows[:1]] = torch.ones(1, 3)
        delta.synchronise()
        flags.synchronise()
        result[rank] = (delta.numpy().tolist(), flags.numpy().tolist())
    finally:
        torch.distributed.destroy_process_group()


def test_row_tables_combine_the_changes_of_every_rank():
    """After an epoch every rank holds every rank's updates (disjoint rows: sum of deltas; flags: max)."""
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_sync_worker, args=(2, free_port(), result), nprocs=2, join=True)
        result = dict(result)
    start = np.arange(12, dtype=np.float32).reshape(4, 3)
    expected = start + np.array([[100], [200], [100], [200]])
    expected_flags = np.zeros((4, 3))
    expected_flags[[0, 1]] = 1
    for rank in (0, 1):
        delta, flags = result[rank]
        np.testing.assert_array_equal(delta, expected)
        np.testing.assert_array_equal(flags, expected_flags)


def _ctx(n: int = 4, c: int = 3) -> LabelStateContext:
    return LabelStateContext(observed=np.zeros((n, c), np.int8), family="coco", seed=0, device=torch.device("cpu"))


class _TwoTables(LabelState):
    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        self.tables = {"a": RowTable(np.zeros((ctx.num_rows, ctx.num_classes))),
                       "b": RowTable(np.ones((ctx.num_rows, ctx.num_classes)), dtype=torch.float16)}


def test_state_dict_round_trip_and_missing_table():
    state = _TwoTables(_ctx(), None)
    state.tables["a"][torch.tensor([2])] = torch.tensor([[1.5, 2.5, 3.5]])
    saved = {k: v.clone() for k, v in state.state_dict().items()}
    fresh = _TwoTables(_ctx(), None)
    fresh.load_state_dict(saved)
    assert fresh.tables["a"][[2]].tolist() == [[1.5, 2.5, 3.5]]
    assert fresh.memory_bytes() == 4 * 3 * 4 + 4 * 3 * 2
    with pytest.raises(ValueError, match=r"lacks tables \['b'\]"):
        fresh.load_state_dict({"a": saved["a"]})


def test_none_state_is_a_no_op():
    state = create_label_state("none", _ctx(), {})
    observed = torch.tensor([[1, 0, -1]])
    assert state.observed_for(torch.tensor([0]), observed) is observed
    assert state.batch_state(torch.tensor([0]), torch.device("cpu")) == {}
    assert state.param_groups(1e-3) == [] and state.state_dict() == {} and state.labels() is None


def test_registry_errors_name_the_option():
    assert "none" in LABEL_STATES
    with pytest.raises(InputError, match="label_state: unknown label state 'nonee'.*did you mean 'none'"):
        create_label_state("nonee", _ctx(), {})
    with pytest.raises(InputError, match="unknown option"):
        create_label_state_cfg("none", "coco", {"lr": 1.0})
