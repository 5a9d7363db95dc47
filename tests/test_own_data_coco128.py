"""A user's own weakly labelled images end to end, on the 128 real COCO images of ../shared/data/coco128.

Written as a user would: a CSV manifest whose train rows carry one tag each and no full labels, and a small
fully labelled val and test split; then prepare, precompute (the built-in digits teacher, for speed), train
(aevlp and an, a few steps of the small CNN), evaluate, predict and export (TorchScript). Sizes are small on purpose.
"""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import open_dataset

from tests.conftest import run_cli

SMALL = ["--epochs", "1", "--batch-size", "16", "--image-size", "32", "--backbone", "small-cnn", "--no-pretrained",
         "--workers", "0", "--max-batches", "2"]


def coco128_tags(root: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(image file names in order, file name → sorted category names) from the instances JSON."""
    inst = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    tags: dict[int, set[str]] = {}
    for ann in inst["annotations"]:
        tags.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    images = sorted(inst["images"], key=lambda im: im["file_name"])
    return [im["file_name"] for im in images], {im["file_name"]: sorted(tags.get(im["id"], ())) for im in images}


def write_user_manifest(root: Path, path: Path) -> dict[str, list[str]]:
    """Train rows: one tag (the first name alphabetically, as a scraper's folder name would be), no full labels;
    val and test rows: every tag. Returns the split of each file name."""
    files, tags = coco128_tags(root)
    splits = {"train": files[:88], "val": files[88:108], "test": files[108:]}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "split", "labels", "positives"])
        for split, names in splits.items():
            for name in names:
                if split == "train":
                    writer.writerow([name, "", "", tags[name][0] if tags[name] else ""])
                else:
                    writer.writerow([name, split, "|".join(tags[name]) or "-", ""])
    return splits


def find_key(tree: dict, key: str):
    """The first value of `key` anywhere in nested tables."""
    for k, v in tree.items():
        if k == key:
            return v
        if isinstance(v, dict) and (found := find_key(v, key)) is not None:
            return found
    return None


@pytest.fixture(scope="module")
def coco128(tmp_path_factory) -> Path:
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "coco128"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip("../shared/data/coco128 is not present")
    return root


@pytest.mark.slow
def test_own_data_end_to_end(coco128, teacher_cache, tmp_path, monkeypatch, capsys):
    import torch
    from mlpl.stages.deploy.model import load_pixels

    monkeypatch.setenv("MLPL_CACHE", str(teacher_cache))
    manifest = tmp_path / "tags.csv"
    splits = write_user_manifest(coco128, manifest)
    data, store = tmp_path / "data", tmp_path / "store"
    assert run_cli(["prepare", "--dataset", "manifest", "--manifest", manifest, "--images", coco128 / "train2017",
                    "--out", data, "--rows-per-shard", "32"]) == 0
    ds = open_dataset(data)
    assert ds.meta.splits == {"train": 88, "val": 20, "test": 20} and ds.meta.regimes == ("given",)
    _, tags = coco128_tags(coco128)
    m = np.mean([len(tags[name]) for name in splits["val"]])  # the generic family's m: measured on val
    assert ds.meta.family == "generic" and ds.meta.expected_positives == pytest.approx(m, abs=1e-4)
    assert not ds.labels.known_of(np.arange(88)).any() and ds.labels.all_known(np.arange(88, 128))
    tagged = sum(bool(tags[name]) for name in splits["train"])  # images 250 and 508 have no annotation
    assert ds.observations("given").matrix(ds.meta.num_classes).max(1).sum() == tagged

    assert run_cli(["precompute-clip", "--dataset", data, "--out", store, "--model", "digits", "--grid", "2",
                    "--seeds", "1", "--image-size", "32", "--workers", "0"]) == 0
    for method in ("aevlp", "an"):
        run = tmp_path / method
        assert run_cli(["train", "--dataset", data, "--method", method, "--regime", "given", "--pseudo-store",
                        store, "--out", run, *SMALL]) == 0
        summary = run_schema.read_summary(run)
        assert summary.val is not None and summary.test is not None and 0 <= summary.test.map <= 100
    assert any("unknown full labels for 88 of 88" in n for n in run_schema.read_summary(tmp_path / "aevlp").notes)
    config = tomllib.loads((tmp_path / "aevlp" / "config.toml").read_text())
    assert m == pytest.approx(find_key(config, "expected_positives"), abs=1e-4)  # the run trains with the measured m
    capsys.readouterr()

    run = tmp_path / "aevlp"
    monkeypatch.chdir(tmp_path.parent)  # the run records absolute paths
    assert run_cli(["evaluate", run, "--split", "test"]) == 0
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", run, coco128 / "train2017", "--out", out, "--thresholds", "val-f1",
                    "--workers", "0"]) == 0
    table = pcsv.read_csv(out)
    assert table.num_rows == 128 and table.column_names[:2] == ["image", "labels"]
    classes = ds.meta.classes
    probs = np.stack([table.column(f"p_{c}").to_numpy() for c in classes], axis=1)

    # TorchScript here (the ONNX exporter takes half a minute; tests/test_deploy.py checks ONNX the same way)
    assert run_cli(["export", run, "--format", "torchscript", "--out", tmp_path / "model.pt"]) == 0
    extra = {"mlpl.model.json": ""}
    script = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    meta = json.loads(extra["mlpl.model.json"])
    assert tuple(meta["classes"]) == classes and meta["threshold_rule"] == "val-f1"
    first = table.column("image").to_pylist()[:8]
    pixels = torch.stack([load_pixels(Path(p).read_bytes(), meta["image_size"], meta["interpolation"])
                          for p in first])
    assert np.abs(script(pixels).detach().numpy() - probs[:8]).max() < 1e-4
