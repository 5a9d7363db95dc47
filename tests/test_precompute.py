"""Stage one end to end: the store's contents, resume after a kill, torchrun ranks, corrupt images, the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from mlpl.cli import main
from mlpl.schemas.dataset import open_dataset
from mlpl.schemas.errors import InputError
from mlpl.schemas.store import open_store
from mlpl.stages.pixels import decode_uint8
from mlpl.stages.precompute.run import PrecomputeCfg, run_precompute
from mlpl.stages.precompute.teacher import TeacherCfg, class_text_embeddings, load_teacher
from mlpl.stages.precompute.views import make_views, normalize_views
from mlpl.stages.prepare.datasets import PrepareRequest, prepare_dataset

TORCHRUN = Path(sys.executable).parent / "torchrun"
SEEDS = 2
BATCH = 4  # images per forward in every run compared byte for byte (the batch fixes the arithmetic)


@pytest.fixture(scope="session")
def digits_cache(teacher_cache) -> Path:
    """The digits teacher's cache (conftest's `teacher_cache`: fitted at most once)."""
    return teacher_cache


@pytest.fixture(autouse=True)
def _cache_env(digits_cache, monkeypatch):
    monkeypatch.setenv("MLPL_CACHE", str(digits_cache))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """80 train canvases in 5 shards of 16 rows (store chunks)."""
    out = tmp_path_factory.mktemp("data") / "digits-small"
    prepare_dataset("digits", PrepareRequest(out=out, regimes=("full",), rows_per_shard=16,
                                             options={"size": 100, "test_size": 10}))
    return out


def cli(*args: str) -> int:
    """Run `mlpl ARGS` in this process; return the exit code."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def cli_subprocess(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlpl.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def store_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory, digits_cache) -> Path:
    """One uninterrupted single-process run of the CLI (2 seeds, batch 4, one worker)."""
    os.environ["MLPL_CACHE"] = str(digits_cache)
    out = tmp_path_factory.mktemp("stores") / "reference"
    assert cli("precompute-clip", "--dataset", str(dataset), "--out", str(out), "--seeds", str(SEEDS),
               "--batch-size", str(BATCH), "--workers", "1") == 0
    return out


def test_store_holds_the_teachers_cosines(reference, dataset):
    store = open_store(reference)
    a = store.attrs
    ds = open_dataset(dataset)
    assert store.is_complete() and store.done_matrix().shape == (SEEDS, 5)
    assert store.sims.shape == (SEEDS, 80, 10, 10) and store.sims.dtype == np.float16
    assert a.num_rows == 80 and a.rows_per_chunk == 16 and a.seeds == (0, 1)
    assert a.dataset_fingerprint == ds.meta.fingerprint and a.classes == ds.meta.classes
    assert a.views["grid"] == 3 and a.views["overlap"] == 0.2 and a.views["image_size"] == 32
    assert a.teacher["model"] == "digits" and a.teacher["prompts"][7] == "a photo of the digit seven."
    assert a.teacher["weights"]["sha256"] and a.teacher["noise"] is None
    sims = np.asarray(store.sims[...])
    assert not np.isnan(sims).any() and store.corrupt_rows == []
    # recompute one row from scratch: views of (seed 1, row 37) through the teacher
    teacher = load_teacher(TeacherCfg(model="digits"))
    text, _ = class_text_embeddings(teacher, ds.meta.classes, a.teacher["prompt_template"], None)
    np.testing.assert_array_equal(store.text_emb(), text.numpy())

    shard = dataset / "shards" / ds.shards_of("train")[2].name
    with tarfile.open(shard) as tar:
        png = tar.extractfile(f"{37:09d}.png").read()
    views = make_views(decode_uint8(png), 1, 37, ds_views(a.views))
    feats = teacher.encode_images(normalize_views(views, "clip"))
    expected = (feats @ text.T).numpy()
    np.testing.assert_allclose(sims[1, 37].astype(np.float32), expected, atol=2e-3)
    # the teacher reads digits in tiles, not in the crowded global view (docs/architecture.md, the digits world)
    from sklearn.metrics import average_precision_score

    labels = ds.labels.matrix(np.arange(80))
    present = labels.any(axis=0) & ~labels.all(axis=0)

    def macro_ap(scores: np.ndarray) -> float:
        return float(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in np.flatnonzero(present)]))

    tiles, whole = macro_ap(sims[0, :, 1:].max(axis=1).astype(np.float32)), macro_ap(sims[0, :, 0].astype(np.float32))
    assert tiles > 0.85 and tiles > whole + 0.3, (tiles, whole)


def ds_views(d: dict):
    from mlpl.stages.precompute.views import ViewCfg

    return ViewCfg(**{k: d[k] for k in ("grid", "overlap", "flip", "normalize", "image_size", "interpolation",
                                          "weak_aug")})


def test_worker_count_does_not_change_the_store(reference, dataset, tmp_path):
    out = tmp_path / "store"
    cfg = PrecomputeCfg(dataset=dataset, out=out, seeds=(0, 1), teacher=TeacherCfg(model="digits"),
                        batch_size=BATCH, workers=0)
    report = run_precompute(cfg)
    assert report.tasks_run == 10 and report.images == 160 and report.views == 1600
    assert store_files(out) == store_files(reference)
    again = run_precompute(cfg)  # complete: nothing to do
    assert again.tasks_run == 0 and again.tasks_done_before == 10
    assert store_files(out) == store_files(reference)


def test_a_killed_run_resumes_to_the_same_bytes(reference, dataset, tmp_path):
    out = tmp_path / "store"
    args = ["precompute-clip", "--dataset", str(dataset), "--out", str(out), "--seeds", str(SEEDS),
            "--batch-size", str(BATCH), "--workers", "1"]
    proc = cli_subprocess(*args, start_new_session=True)
    done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "zarr.json").exists():  # the store appears whole (created beside --out, then renamed)
            done = int(open_store(out).done_matrix().sum())
            if done >= 2:
                break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = open_store(out).done_matrix().sum()
    assert 2 <= killed < SEEDS * 5, f"the run was not killed mid-way ({killed} tasks done)"
    rerun = cli_subprocess(*args)
    output = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, output
    assert f"{int(killed)} already done" in output
    assert store_files(out) == store_files(reference)


def test_torchrun_two_ranks_write_the_same_store(reference, dataset, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mlpl.cli", "precompute-clip",
         "--dataset", str(dataset), "--out", str(out), "--seeds", str(SEEDS), "--batch-size", str(BATCH),
         "--workers", "1"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 1 of 2 runs 5" in proc.stderr and "rank 0 of 2 runs 5" in proc.stderr
    a, b = open_store(out), open_store(reference)
    np.testing.assert_array_equal(np.asarray(a.sims[...]), np.asarray(b.sims[...]))
    assert a.attrs == b.attrs and a.is_complete()
    assert store_files(out) == store_files(reference)


def corrupt_row(src: Path, dst: Path, row: int) -> None:
    """Copy a prepared dataset, replacing one image's bytes by garbage."""
    shutil.copytree(src, dst)
    ds = open_dataset(dst)
    shard = next(s for s in ds.shards if s.first_row <= row < s.first_row + s.num_samples)
    path = dst / "shards" / shard.name
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name == f"{row:09d}.png":
                data = b"\x89PNG not really an image"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_corrupt_images_become_nan_rows_listed_in_the_store(reference, dataset, tmp_path, caplog):
    broken = tmp_path / "broken"
    corrupt_row(dataset, broken, 21)
    cfg = PrecomputeCfg(dataset=broken, out=tmp_path / "store", seeds=(0, 1), teacher=TeacherCfg(model="digits"),
                        batch_size=BATCH, workers=0, keep_embeddings=True)
    with caplog.at_level("WARNING"):
        report = run_precompute(cfg)
    assert report.corrupt_rows == [21]
    assert any("row 21" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)
    store = open_store(tmp_path / "store")
    assert store.is_complete() and store.corrupt_rows == [21]
    sims = np.asarray(store.sims[...]).astype(np.float32)
    assert np.isnan(sims[:, 21]).all() and not np.isnan(np.delete(sims, 21, axis=1)).any()
    # the other rows of that shard are those of a clean run (batches shrink, arithmetic does not change)
    clean = np.asarray(open_store(reference).sims[...]).astype(np.float32)
    np.testing.assert_allclose(np.delete(sims, 21, axis=1), np.delete(clean, 21, axis=1), atol=2e-3)
    # --keep-embeddings: the normalised image embeddings the cosines were computed from
    emb = np.asarray(store.group["img_emb"][...]).astype(np.float32)
    assert emb.shape == (2, 80, 10, store.attrs.embed_dim) and np.isnan(emb[:, 21]).all()
    np.testing.assert_allclose(emb[0, 3] @ store.text_emb().T, sims[0, 3], atol=5e-3)


def test_text_noise_changes_the_text_embeddings_and_is_recorded(reference, dataset, tmp_path):
    cfg = PrecomputeCfg(dataset=dataset, out=tmp_path / "store", seeds=(0,), teacher=TeacherCfg(model="digits"),
                        batch_size=16, workers=0, noise=True, noise_seed=3)
    run_precompute(cfg)
    store = open_store(tmp_path / "store")
    assert store.attrs.teacher["noise"] == {"topk": 10, "seed": 3, "hidden": 1024, "neighbour_scale": 0.2,
                                            "self_weight": 0.8, "slope": 0.2}
    noised, clean = store.text_emb(), open_store(reference).text_emb()
    np.testing.assert_allclose(np.linalg.norm(noised, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(noised, clean)


def test_resuming_with_other_settings_is_refused(reference, tmp_path, dataset):
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    cfg = PrecomputeCfg(dataset=dataset, out=out, seeds=(0, 1), teacher=TeacherCfg(model="digits"),
                        overlap=0.0, batch_size=BATCH, workers=0)
    with pytest.raises(InputError, match="views.overlap: store has 0.2, this run 0.0"):
        run_precompute(cfg)


def test_a_store_whose_views_another_resampling_made_is_refused(reference, tmp_path, dataset):
    """A store written by another resize implementation (older stores record none) is never resumed."""
    import zarr

    assert open_store(reference).attrs.views["resize"] == "torch-uint8"
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    group = zarr.open_group(str(out), mode="r+")
    recorded = dict(group.attrs["mlpl"])
    recorded["views"] = {k: v for k, v in recorded["views"].items() if k != "resize"}
    group.attrs["mlpl"] = recorded
    cfg = PrecomputeCfg(dataset=dataset, out=out, seeds=(0, 1), teacher=TeacherCfg(model="digits"),
                        batch_size=BATCH, workers=0)
    with pytest.raises(InputError, match='views.resize: store has null, this run "torch-uint8"'):
        run_precompute(cfg)


def test_view_batches_reuse_their_buffers_once_released(dataset):
    from mlpl.stages.precompute.run import resolve_view_cfg
    from mlpl.stages.precompute.tasks import train_tasks
    from mlpl.stages.precompute.view_stream import ViewStream

    ds = open_dataset(dataset)
    teacher = load_teacher(TeacherCfg(model="digits"))
    views = resolve_view_cfg(PrecomputeCfg(dataset=dataset, out=dataset / "unused", seeds=(0,),
                                           teacher=TeacherCfg(model="digits")), ds, teacher)
    stream = ViewStream(train_tasks(ds, (0,)), views, batch_images=6, workers=0, slots=2)  # shards of 16 rows
    batches = iter(stream)
    first = next(batches)
    second = next(batches)
    assert (first[5], second[5]) == (0, 1) and first[2].data_ptr() != second[2].data_ptr()
    stream.release(first[5])
    third = next(batches)
    assert third[5] == 0 and third[2].data_ptr() == first[2].data_ptr()  # the released buffer, not a new one
    fourth = next(batches)  # slots 0 and 1 still in use: a fresh buffer outside the ring
    assert fourth[5] == -1 and fourth[2].data_ptr() not in {first[2].data_ptr(), second[2].data_ptr()}
    assert third[2].shape[0] == 4 and fourth[3].all()
    assert fourth[2].shape == (6, views.num_views, views.image_size, views.image_size, 3)


_CLAIM_WHILE_RELEASED = """
import threading
from mlpl.stages.precompute.views import ViewCfg
from mlpl.stages.precompute.view_stream import ViewStream
stream = ViewStream([], ViewCfg(grid=1, image_size=8), batch_images=1, workers=0, slots=6)
stop = threading.Event()
def release():
    i = 0
    while not stop.is_set():
        stream.release(i % 6)
        i += 1
thread = threading.Thread(target=release)
thread.start()
try:
    for _ in range(10_000):
        stream._buffer(1)
finally:
    stop.set()
    thread.join()
"""


def test_a_worker_claims_buffers_while_the_main_process_releases_them():
    """The main process releases slots at any moment: a worker looking for a free one must see one state of the
    shared flags (torch.nonzero over the live shared tensor failed an internal assert, or corrupted the heap)."""
    done = subprocess.run([sys.executable, "-c", _CLAIM_WHILE_RELEASED], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dataset_by_name_under_the_data_root(reference, dataset, tmp_path, capsys):
    out = tmp_path / "store"
    code = cli("precompute-clip", "--dataset", dataset.name, "--data-root", str(dataset.parent), "--out", str(out),
               "--seeds", "1", "--batch-size", str(BATCH), "--workers", "0")
    assert code == 0
    np.testing.assert_array_equal(np.asarray(open_store(out).sims[0]), np.asarray(open_store(reference).sims[0]))
    assert cli("precompute-clip", "--dataset", "nus", "--data-root", str(tmp_path), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "nus" in err and str(tmp_path / "nus") in err


def test_inspect_prints_attributes_completion_and_size(reference, capsys):
    assert cli("inspect", str(reference)) == 0
    text = capsys.readouterr().out
    assert "completion 10/10 tasks (100%)" in text and "grid 3" in text and "MiB" in text
    assert cli("inspect", str(reference), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completion"] == {"done_tasks": 10, "total_tasks": 10} and summary["size_bytes"] > 0
    assert summary["attributes"]["teacher"]["model"] == "digits"


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--seeds", "0"], "--seeds"), (["--grid", "0"], "--grid"), (["--normalize", "imagnet"], "--normalize"),
     (["--batch-size", "0"], "--batch-size"), (["--precision", "bf16"], "--precision"),
     (["--model", "ViT-B-61"], "--model"), (["--noise-topk", "3"], "--noise-topk")],
)
def test_bad_options_exit_2_naming_the_option(dataset, tmp_path, capsys, args, option):
    out = tmp_path / "store"
    assert cli("precompute-clip", "--dataset", str(dataset), "--out", str(out), *args) == 2
    assert option in capsys.readouterr().err
    assert not out.exists()


def test_offline_missing_weights_fail_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "store"
    start = time.perf_counter()
    code = cli("precompute-clip", "--dataset", str(dataset), "--out", str(out), "--model", "ViT-B-16",
               "--pretrained", "laion2b_s34b_b88k", "--cache-dir", str(tmp_path / "empty-cache"))
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "open_clip_pytorch_model.bin" in err and "huggingface-cli download" in err
    assert time.perf_counter() - start < 10


def test_teacher_fit_command_reports_the_cached_teacher(capsys):
    assert cli("teacher", "fit", "digits") == 0
    out = capsys.readouterr().out
    assert "zero-shot accuracy 0.9" in out and "digits-" in out
    assert cli("teacher", "fit", "imagenet") == 2


def test_view_settings_default_to_the_dataset_and_teacher(dataset, caplog):
    from types import SimpleNamespace

    from mlpl.stages.precompute.run import resolve_view_cfg
    from mlpl.stages.runtime import CLIP_MEAN, CLIP_STD

    teacher = SimpleNamespace(image_size=48, interpolation="bilinear", mean=CLIP_MEAN, std=CLIP_STD)
    ds = open_dataset(dataset)
    cfg = PrecomputeCfg(dataset=dataset, out=Path("unused"), seeds=(0,), teacher=TeacherCfg(model="digits"))
    views = resolve_view_cfg(cfg, ds, teacher)
    assert (views.grid, views.image_size, views.interpolation, views.normalize) == (3, 48, "bilinear", "clip")
    assert not caplog.records
    with caplog.at_level("WARNING"):
        resolve_view_cfg(PrecomputeCfg(dataset=dataset, out=Path("unused"), seeds=(0,), grid=4, normalize="imagenet",
                                       teacher=TeacherCfg(model="digits")), ds, teacher)
    assert any("--normalize imagenet" in r.getMessage() for r in caplog.records)
