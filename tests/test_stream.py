"""Stage-two stream: exact epochs, determinism, rank and worker splits with equal batches, store join by chunk,
uint8 batches with the PIL path's pixels and flips, normalised on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 7])
def test_worker_row_ranges_partition_the_split_whatever_the_shard_count(digits_small, workers, monkeypatch):
    from types import SimpleNamespace

    from mlpl.stages.train import stream

    ds = open_dataset(digits_small)
    shards = stream._shards(ds, "train")
    assert len(shards) == 3  # 160 rows in shards of 64
    per_worker = []
    for w in range(workers):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda w=w: SimpleNamespace(id=w, num_workers=workers))
        per_worker.append([s["row"] for s in stream.WorkerRows(shards)])
    assert [r for rows in per_worker for r in rows] == list(range(160))  # contiguous, in order, each row once
    sizes = [len(rows) for rows in per_worker]
    assert max(sizes) - min(sizes) <= 1  # every worker asked for has work


def test_more_workers_than_shards_keep_exact_epochs_and_equal_rank_batches(digits_small):
    ds = open_dataset(digits_small)
    obs = ds.observations("spml").matrix(10)
    cfg = StreamCfg(image_size=32, batch_size=16, workers=5, shuffle_buffer=50)
    assert sorted(_rows(train_loader(ds, obs, cfg, epoch=0, seed=0))) == list(range(160))
    per_rank = [_rows(train_loader(ds, obs, cfg, epoch=0, seed=0, rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 80 and set(per_rank[0]) | set(per_rank[1]) == set(range(160))
    assert sorted(_rows(eval_loader(ds, "test", cfg))) == list(range(200, 250))


def test_uint8_batches_hold_the_pil_path_pixels_and_the_seeded_flips(digits_small):
    """The stream's images are PIL's decode + bilinear resize within one uint8 unit, flipped by the per-row coin."""
    import webdataset as wds
    from mlpl.schemas.images import decode_rgb
    from mlpl.stages.train.stream import model_input
    from PIL import Image

    ds = open_dataset(digits_small)
    obs = ds.observations("spml").matrix(10)
    cfg = StreamCfg(image_size=40, batch_size=16, workers=2, shuffle_buffer=50)
    raw = {int(s["row"]): s["png"] for url in ds.shard_paths("train")
           for s in wds.WebDataset(str(url), shardshuffle=False, empty_check=False)}
    epoch_seed = int(np.random.SeedSequence([0, 0]).generate_state(1)[0])
    batch = next(iter(train_loader(ds, obs, cfg, epoch=0, seed=0)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (16, 3, 40, 40)
    shown = model_input(batch, torch.device("cpu"), (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    flips = []
    for i, row in enumerate(batch["row"].tolist()):
        pil = np.asarray(decode_rgb(raw[row]).resize((40, 40), Image.BILINEAR)).astype(np.float32)
        flip = np.random.default_rng([epoch_seed, row]).random() < 0.5  # the PIL path's coin
        flips.append(flip)
        expected = pil[:, ::-1] if flip else pil
        assert np.abs(shown[i].permute(1, 2, 0).numpy() - expected).max() <= 1.0 + 1e-3, row
    assert batch["flip"].tolist() == flips and 0 < sum(flips) < len(flips)


def test_model_input_flips_and_normalises_with_the_given_statistics():
    from mlpl.stages.train.stream import model_input

    image = torch.arange(2 * 3 * 2 * 3, dtype=torch.uint8).view(2, 3, 2, 3) * 10
    batch = {"image": image, "flip": torch.tensor([False, True])}
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    x = model_input(batch, torch.device("cpu"), mean, std)
    expected = (image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(x[0], expected[0])
    torch.testing.assert_close(x[1], expected[1].flip(-1))


@pytest.fixture(scope="module")
def jpeg_world(tmp_path_factory) -> Path:
    """A prepared dataset of 40 JPEGs of different sizes (manifest), 4 shards of train rows."""
    import io

    from PIL import Image

    from tests.conftest import run_cli

    root = Path(tmp_path_factory.mktemp("jpegs"))
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    lines = ["image,split,labels"]
    for i in range(40):
        h, w = 40 + 7 * (i % 5), 56 - 3 * (i % 4)
        coarse = Image.fromarray(rng.randint(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
        buf = io.BytesIO()
        coarse.save(buf, format="JPEG", quality=90)
        (root / "images" / f"{i:03d}.jpg").write_bytes(buf.getvalue())
        lines.append(f"{i:03d}.jpg,{'val' if i % 5 == 0 else 'train'},{'a|b' if i % 2 else 'c'}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    assert run_cli(["prepare", "--dataset", "manifest", "--manifest", root / "m.csv", "--images", root / "images",
                    "--out", root / "data", "--rows-per-shard", "8", "--family", "coco", "--regime", "spml"]) == 0
    return root / "data"


@pytest.mark.parametrize("workers", [0, 2])
def test_device_decoding_gives_the_workers_batches_within_one_unit(jpeg_world, workers):
    """`decode='device'`: the JPEGs travel as bytes and are decoded in the main process (here on the CPU, as on a
    GPU); rows, order, labels and flips are the workers' path's, pixels within one uint8 unit."""
    from dataclasses import replace

    ds = open_dataset(jpeg_world)
    obs = ds.observations("spml").matrix(3)
    cfg = StreamCfg(image_size=24, batch_size=8, workers=workers, shuffle_buffer=10)
    on_device = replace(cfg, decode="device", device="cpu")
    for make in (lambda c: train_loader(ds, obs, c, epoch=0, seed=3), lambda c: eval_loader(ds, "val", c)):
        ref, got = list(make(cfg)), list(make(on_device))
        assert len(ref) == len(got) > 0
        for a, b in zip(ref, got, strict=True):
            assert set(a) == set(b)  # the bytes' fields are gone once decoded
            for key in a:
                if key != "image":
                    assert torch.equal(a[key], b[key]), key
            diff = (a["image"].int() - b["image"].int()).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.5


def test_a_jpeg_that_does_not_decode_on_the_device_is_dropped_and_counted():
    import io

    from mlpl.stages.train.stream import collate, decode_on_device
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(buf, format="JPEG")
    good = buf.getvalue()
    samples = [{"row": r, "full": np.zeros(2, np.int8), "flip": False, "jpeg": data}
               for r, data in ((5, good), (6, good[: len(good) // 2]), (7, good))]
    part = decode_on_device(collate(samples), torch.device("cpu"), 16, "bilinear")
    assert part["ok"].tolist() == [True, False, True]
    assert part["image"].shape == (3, 3, 16, 16) and "jpeg" not in part
    assert int(part["image"][0].float().mean().round()) == 120


def test_decoding_ahead_keeps_order_raises_errors_and_stops_when_closed():
    import threading

    from mlpl.stages.pixels import decoded_ahead

    parts = [{"row": torch.tensor([i]), "jpeg": torch.tensor([i])} for i in range(6)]

    def decoder(part):
        return {"row": part["row"], "image": part["jpeg"] * 10}

    got = list(decoded_ahead(iter(parts), decoder))
    assert [int(p["image"]) for p in got] == [0, 10, 20, 30, 40, 50] and "jpeg" not in got[0]

    def failing(part):
        raise ValueError("decoder failed")

    with pytest.raises(ValueError, match="decoder failed"):
        list(decoded_ahead(iter(parts), failing))
    stream = decoded_ahead(iter(parts), decoder, depth=1)
    assert int(next(stream)["image"]) == 0
    stream.close()  # the thread stops; nothing is left running
    assert not [t for t in threading.enumerate() if t.name == "decode-ahead"]
