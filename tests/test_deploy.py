"""A trained run on new images: `mlpl predict`, per-class thresholds, `mlpl export`, `mlpl.load`, moved runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from mlpl.schemas.errors import InputError
from mlpl.stages.deploy.inputs import collect_images
from mlpl.stages.deploy.model import select_labels
from mlpl.stages.deploy.thresholds import f1_thresholds

from tests.conftest import run_cli

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TINY = ["--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "2"]


def test_f1_thresholds_by_hand():
    probs = np.array([[0.9, 0.2], [0.8, 0.1], [0.4, 0.3], [0.3, 0.05]], dtype=np.float32)
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    thresholds, f1 = f1_thresholds(probs, targets, default=0.5)
    # class 0, cutting at 0.9: TP 1, FP 0, FN 1 → 2/3; at 0.8: 1/(1+1+1)·2 = 1/2; at 0.4: TP 2, FP 1 → 4/5
    assert thresholds[0] == pytest.approx(0.4) and f1[0] == pytest.approx(0.8)
    assert thresholds[1] == 0.5 and np.isnan(f1[1])  # no positive: the default stays
    tied = np.array([[0.5], [0.5], [0.2]], dtype=np.float32)
    t, f = f1_thresholds(tied, np.array([[1], [0], [0]]), 0.5)  # never cut between equal scores
    assert t[0] == pytest.approx(0.5) and f[0] == pytest.approx(2 / 3)


def test_select_labels_thresholds_then_top_k():
    probs = np.array([[0.2, 0.9, 0.6], [0.1, 0.1, 0.1]], dtype=np.float32)
    assert select_labels(probs, [0.5, 0.5, 0.5], None) == [[1, 2], []]
    assert select_labels(probs, [0.5, 0.5, 0.5], 1) == [[1]]  + [[]]
    assert select_labels(probs, [0.1, 0.95, 0.5], None) == [[2, 0], [0]]


def _png(path: Path, value: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pictures")
    for i in range(5):
        _png(root / ("sub" if i % 2 else "") / f"img{i}.png", i)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_collect_images_files_folders_patterns_manifests(pictures, tmp_path):
    found = collect_images([pictures])
    assert [p.relative_to(pictures).as_posix() for p in found] == [
        "broken.jpg", "img0.png", "img2.png", "img4.png", "sub/img1.png", "sub/img3.png"]
    assert collect_images([str(pictures / "**" / "img[13].png")]) == [pictures / "sub/img1.png",
                                                                       pictures / "sub/img3.png"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,labels\nimg0.png,cat\nsub/img1.png,\n")
    assert collect_images([manifest, pictures / "img0.png"], images_root=pictures) == [
        pictures / "img0.png", pictures / "sub/img1.png"]  # each image once, first place kept
    with pytest.raises(InputError, match="no such file or folder"):
        collect_images([tmp_path / "nothing"])
    with pytest.raises(InputError, match="matches no image file"):
        collect_images([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="a folder without images"):
        collect_images([tmp_path / "empty"])


@pytest.fixture(scope="module")
def trained(digits_small, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "an"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", run, *TINY]) == 0
    return run


def test_predict_writes_every_format_and_lists_unreadable_images(trained, pictures, tmp_path, capsys):
    outs = {}
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"pred.{suffix}"
        assert run_cli(["predict", trained, pictures, "--out", out, "--workers", "1", "--top-k", "3"]) == 0
        text = capsys.readouterr().out
        assert "predicted 5 images" in text and "skipped 1 unreadable images" in text and "broken.jpg" in text
        assert not list(tmp_path.glob("*.tmp"))
        outs[suffix] = out
    csv = pcsv.read_csv(outs["csv"])
    assert csv.column_names[:3] == ["image", "labels", "p_zero"] and csv.num_rows == 5
    rows = [json.loads(line) for line in outs["jsonl"].read_text().splitlines()]
    parquet = pq.read_table(outs["parquet"])
    meta = json.loads(parquet.schema.metadata[b"mlpl.predictions"])
    assert meta["unreadable"] == [str(pictures / "broken.jpg")] and meta["top_k"] == 3
    for i in range(5):
        probs = np.array([rows[i]["probabilities"][d] for d in DIGITS])
        assert np.allclose(probs, [csv.column(f"p_{d}")[i].as_py() for d in DIGITS], atol=1e-5)
        assert rows[i]["labels"] == parquet.column("labels")[i].as_py()
        assert len(rows[i]["labels"]) <= 3 and all(rows[i]["probabilities"][c] >= 0.5 for c in rows[i]["labels"])


def test_predict_decoding_jpegs_on_the_device_matches_the_workers(trained, pictures, tmp_path, capsys):
    """`--decode device`: JPEGs decoded in the main process on the run's device (here the CPU, as on a GPU), PNGs
    and bad files left to the workers; the same images, probabilities within 1e-3, the same unreadable list."""
    from PIL import Image

    folder = tmp_path / "mixed"
    shutil.copytree(pictures, folder)
    rng = np.random.default_rng(7)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36 + 4 * i, 50, 3), dtype=np.uint8)).save(folder / f"photo{i}.jpg",
                                                                                         quality=92)
    whole = (folder / "photo0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # no end marker: the strict CPU decoder judges it
    tables = {}
    for decode in ("workers", "device"):
        out = tmp_path / f"{decode}.csv"
        assert run_cli(["predict", trained, folder, "--out", out, "--workers", "1", "--decode", decode]) == 0
        assert "skipped 2 unreadable images" in capsys.readouterr().out
        tables[decode] = pcsv.read_csv(out)
    a, b = tables["workers"], tables["device"]
    assert a.column("image").to_pylist() == b.column("image").to_pylist() and a.num_rows == 8
    for name in a.column_names[2:]:
        assert np.allclose(a.column(name).to_numpy(), b.column(name).to_numpy(), atol=1e-3)
    assert run_cli(["predict", trained, folder, "--out", tmp_path / "x.csv", "--decode", "gpu"]) == 2
    assert "--decode 'gpu': expected workers or device" in capsys.readouterr().err


def test_device_decodable_only_complete_rgb_jpegs(tmp_path):
    import io

    from mlpl.stages.pixels import device_decodable
    from PIL import Image

    def encoded(mode: str, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (16, 12), 90).save(buf, format=fmt)
        return buf.getvalue()

    jpeg = encoded("RGB", "JPEG")
    assert device_decodable(jpeg) and device_decodable(encoded("L", "JPEG"))
    assert not device_decodable(jpeg[:-10])  # cut short
    assert not device_decodable(encoded("CMYK", "JPEG"))  # colour conversion only PIL makes
    assert not device_decodable(encoded("RGB", "PNG"))


def test_val_f1_thresholds_are_recorded_and_exported(trained, pictures, tmp_path):
    out = tmp_path / "pred.parquet"
    assert run_cli(["predict", trained, pictures / "img0.png", "--out", out, "--thresholds", "val-f1"]) == 0
    record = json.loads((trained / "thresholds.json").read_text())
    assert record["rule"] == "val-f1" and len(record["thresholds"]) == 10
    meta = json.loads(pq.read_table(out).schema.metadata[b"mlpl.predictions"])
    assert meta["thresholds"] == pytest.approx(record["thresholds"]) and meta["threshold_rule"] == "val-f1"
    assert run_cli(["export", trained, "--format", "torchscript", "--out", tmp_path / "m.pt"]) == 0
    import torch

    extra = {"mlpl.model.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["mlpl.model.json"])["thresholds"] == pytest.approx(record["thresholds"])
    (trained / "thresholds.json").unlink()


def test_exported_models_equal_predict(trained, pictures, tmp_path):
    import onnxruntime
    import torch
    from mlpl.stages.deploy.model import load_pixels

    out = tmp_path / "pred.csv"
    assert run_cli(["predict", trained, pictures, "--out", out, "--workers", "0"]) == 0
    table = pcsv.read_csv(out)
    expected = np.stack([table.column(f"p_{d}").to_numpy() for d in DIGITS], axis=1)
    assert run_cli(["export", trained, "--format", "onnx", "--out", tmp_path / "m.onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    meta = json.loads(session.get_modelmeta().custom_metadata_map["mlpl.model"])
    assert meta["classes"] == list(DIGITS) and meta["image_size"] == 32
    assert meta["backbone"] == "small-cnn" and len(meta["mean"]) == 3 and meta["threshold"] == 0.5
    images = np.stack([load_pixels(Path(p).read_bytes(), meta["image_size"], meta["interpolation"]).numpy()
                       for p in table.column("image").to_pylist()])
    onnx_probs = session.run(None, {"images": images})[0]
    assert np.abs(onnx_probs - expected).max() < 1e-4
    assert run_cli(["export", trained, "--format", "torchscript", "--out", tmp_path / "m.pt"]) == 0
    script = torch.jit.load(str(tmp_path / "m.pt"))
    assert np.abs(script(torch.from_numpy(images)).detach().numpy() - expected).max() < 1e-4


def test_load_predict_takes_paths_arrays_and_pil_images(trained, pictures):
    import mlpl
    from PIL import Image

    model = mlpl.load(trained)
    assert model.classes == DIGITS
    path = pictures / "img0.png"
    pred = model.predict([path, np.asarray(Image.open(path).convert("RGB")), Image.open(path), path.read_bytes(),
                          pictures / "broken.jpg"])
    assert pred.probabilities.shape == (4, 10) and len(pred.labels) == 4
    assert np.abs(pred.probabilities - pred.probabilities[0]).max() < 1e-6
    assert [p for p, _ in pred.unreadable] == [str(pictures / "broken.jpg")]
    with pytest.raises(InputError, match="is not an image"):
        model.predict([42])


def test_evaluate_from_anywhere_and_a_moved_run(trained, digits_small, tmp_path, capsys):
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert run_cli(["evaluate", trained, "--split", "test", "--out", tmp_path / "e.json"]) == 0
    finally:
        os.chdir(cwd)
    moved_run, moved_data = tmp_path / "moved" / "run", tmp_path / "moved" / "data"
    shutil.copytree(trained, moved_run)
    shutil.copytree(digits_small, moved_data)
    config = (moved_run / "config.toml").read_text().replace(str(Path(digits_small).resolve()), "/nowhere/data")
    (moved_run / "config.toml").write_text(config)
    assert run_cli(["evaluate", moved_run, "--out", tmp_path / "x.json"]) == 2
    assert "pass --dataset PATH" in capsys.readouterr().err
    assert run_cli(["evaluate", moved_run, "--dataset", moved_data, "--out", tmp_path / "e2.json"]) == 0
    first, second = (json.loads((tmp_path / n).read_text())["metrics"] for n in ("e.json", "e2.json"))
    assert first == second


def test_a_different_dataset_is_refused(trained, tmp_path, capsys):
    other = tmp_path / "other"
    assert run_cli(["prepare", "--dataset", "digits", "--out", other, "--size", "60", "--test-size", "20",
                    "--seed", "3"]) == 0
    assert run_cli(["evaluate", trained, "--dataset", other, "--out", tmp_path / "e.json"]) == 2
    assert "expected the same dataset" in capsys.readouterr().err


def test_bad_predict_and_export_options(trained, pictures, tmp_path, capsys):
    cases = [
        (["predict", trained, pictures, "--out", tmp_path / "p.txt"], "expected a file ending in one of"),
        (["predict", trained, pictures, "--out", tmp_path / "p.csv", "--thresholds", "val-map"], "expected 'val-f1'"),
        (["predict", trained, pictures, "--out", tmp_path / "p.csv", "--threshold", "0.3", "--thresholds", "val-f1"],
         "give one of them"),
        (["predict", tmp_path, pictures, "--out", tmp_path / "p.csv"], "best.safetensors: missing"),
        (["export", trained, "--format", "tflite", "--out", tmp_path / "m"], "unknown export format 'tflite'"),
    ]
    for args, expected in cases:
        assert run_cli(args) == 2, args
        assert expected in capsys.readouterr().err


def test_a_moved_run_resumes_with_its_dataset_given_again():
    import dataclasses

    from mlpl.stages.train.checkpoint import run_differences
    from mlpl.stages.train.config import TrainCfg

    cfg = TrainCfg(method="an", dataset="/old/data", out="/old/run", family="coco")
    state = {"config": dataclasses.asdict(cfg), "dataset_fingerprint": "abc"}
    assert run_differences(state, dataclasses.replace(cfg, dataset="/new/data", out="/new/run"), "abc") == []
    assert run_differences(state, dataclasses.replace(cfg, dataset="/new/data"), "other")  # another dataset
    assert run_differences(state, dataclasses.replace(cfg, lr=0.5), "abc")  # another configuration
