"""Stage-two stream: exact epochs, determinism, rank split with equal batches, store join by chunk."""

from __future__ import annotations

import numpy as np
import pytest
from mlpl.schemas.dataset import open_dataset
from mlpl.stages.train.stream import StreamCfg, eval_loader, train_loader

CFG = StreamCfg(image_size=32, batch_size=16, workers=2, shuffle_buffer=50)


def _rows(loader) -> list[int]:
    return [r for b in loader for r in b["row"].tolist()]


def test_exact_epoch_and_determinism(digits_small):
    ds = open_dataset(digits_small)
    obs = ds.observations("spml").matrix(10)
    loader = train_loader(ds, obs, CFG, epoch=0, seed=0)
    rows = _rows(loader)
    assert sorted(rows) == list(range(160))
    assert rows == _rows(train_loader(ds, obs, CFG, epoch=0, seed=0))
    assert rows != _rows(train_loader(ds, obs, CFG, epoch=1, seed=0))  # reshuffled per epoch
    assert len(loader) == 10


def test_batch_contents_joined_by_row(digits_small):
    ds = open_dataset(digits_small)
    obs = ds.observations("spml").matrix(10)
    batch = next(iter(train_loader(ds, obs, CFG, epoch=0, seed=0)))
    assert batch["image"].shape == (16, 3, 32, 32)
    rows = batch["row"].numpy()
    np.testing.assert_array_equal(batch["full"].numpy(), ds.labels.matrix(rows))
    np.testing.assert_array_equal(batch["observed"].numpy(), obs[rows])


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_cover_epoch_with_equal_batches(digits_small, world):
    ds = open_dataset(digits_small)
    obs = ds.observations("spml").matrix(10)
    per_rank = [_rows(train_loader(ds, obs, CFG, epoch=0, seed=0, rank=r, world=world)) for r in range(world)]
    assert len({len(r) for r in per_rank}) == 1  # equal samples, hence equal batches
    assert set().union(*map(set, per_rank)) == set(range(160))
    assert sum(len(set(r)) for r in per_rank) == 160  # disjoint apart from padding


def test_eval_loader_covers_split(digits_small):
    ds = open_dataset(digits_small)
    rows = _rows(eval_loader(ds, "test", CFG))
    assert sorted(rows) == list(range(200, 250))


def test_store_joined_one_chunk_at_a_time(digits_small, tmp_path, monkeypatch):
    """A hand-made store whose sims encode the row: each sample carries its own row's similarities."""
    from mlpl.schemas.store import StoreAttrs, create_store, open_store
    from mlpl.stages.train import stream

    ds = open_dataset(digits_small)
    attrs = StoreAttrs(dataset_fingerprint=ds.meta.fingerprint, dataset_name="digits", classes=ds.meta.classes,
                       num_rows=160, rows_per_chunk=64, seeds=(0, 1), teacher={}, views={"grid": 1}, embed_dim=4)
    store = create_store(tmp_path / "store", attrs, np.zeros((10, 4), np.float32))
    sims = np.zeros((2, 160, 2, 10), np.float16)
    sims[:, :, 0, 0] = np.arange(160) / 1000
    sims[1] += 0.5
    store.sims[...] = sims
    reads = []
    original = stream.JoinRows._sims_of

    def counting(self, row):
        chunk = row // self.rows_per_chunk
        if self._chunk is None or self._chunk[0] != chunk:
            reads.append(chunk)
        return original(self, row)

    monkeypatch.setattr(stream.JoinRows, "_sims_of", counting)
    obs = ds.observations("spml").matrix(10)
    cfg = StreamCfg(image_size=32, batch_size=16, workers=0, shuffle_buffer=50)
    for b in train_loader(ds, obs, cfg, epoch=0, seed=0, store_path=open_store(tmp_path / "store").path,
                          store_seed_index=1):
        got = b["sims"][:, 0, 0].numpy()
        np.testing.assert_allclose(got, b["row"].numpy() / 1000 + 0.5, atol=2e-3)
    assert sorted(reads) == [0, 1, 2]  # three chunks, each read once
