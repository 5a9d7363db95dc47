"""The literature's formatted_*.npy arrays: import (regime spml-given), export, and the round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.schemas.labels import Observed
from mlpl.stages.prepare.observations import single_positive
from mlpl.stages.prepare.sources import load_classnames

from tests.conftest import run_cli
from tests.prepare_fixtures import labels_by_key, official_train_keys, split_keys, tiny_image
from tests.test_prepare_voc import TEST, TRAIN, write_voc

C = len(load_classnames("voc.txt"))


def write_formatted(folder: Path, images_root: Path, n_train: int = 12, n_test: int = 5,
                    given: str = "spml", dtype: str = "float64") -> dict[str, np.ndarray]:
    """Arrays as the literature writes them: str paths, 0/1 labels, 1/0/−1 observations (float64; CUB int64)."""
    rng = np.random.RandomState(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("val", n_test)):
        names = np.array([f"{2009 if prefix == 'val' else 2008}_{i:06d}.jpg" for i in range(n)])
        labels = (rng.random_sample((n, C)) < 0.15).astype(np.float64)
        labels[np.arange(n), rng.randint(0, C, n)] = 1.0  # VOC rows all have a positive
        if given == "spml":
            obs = single_positive(labels).astype(np.float64)  # what the literature's script writes
        else:  # any given observations: positives and negatives, not a docs/methods.md §1.2 draw
            obs = np.where(rng.random_sample((n, C)) < 0.3, np.where(labels == 1, 1.0, -1.0), 0.0)
        arrays |= {f"formatted_{prefix}_images.npy": names, f"formatted_{prefix}_labels.npy": labels.astype(dtype),
                   f"formatted_{prefix}_labels_obs.npy": obs.astype(dtype)}
        for i, name in enumerate(names):
            tiny_image(images_root / name, seed=i + (100 if prefix == "val" else 0))
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / name, arr)
    return arrays


def _load_all(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("formatted_*.npy"))}


@pytest.mark.parametrize("given, dtype", [("spml", "float64"), ("any", "float64"), ("spml", "int64")])
def test_import_then_export_round_trips(tmp_path, given, dtype):
    arrays = write_formatted(tmp_path / "fmt", tmp_path / "JPEGImages", given=given, dtype=dtype)
    out = tmp_path / "prepared"
    assert run_cli(["prepare", "--dataset", "voc2012", "--from-formatted", tmp_path / "fmt",
                    "--images", tmp_path / "JPEGImages", "--out", out]) == 0
    ds = ds_schema.validate(out)
    assert ds.meta.name == "voc2012" and set(ds.meta.regimes) == {"full", "spml", "spml-given"}
    assert ds.meta.splits == {"train": 10, "val": 2, "test": 5}  # their train = official train, val = test
    assert official_train_keys(out) == list(arrays["formatted_train_images.npy"])
    assert split_keys(out, "test") == list(arrays["formatted_val_images.npy"])
    # spml-given = the given observations of the train rows
    obs = ds.observations("spml-given")
    pos = {r: i for i, r in enumerate(ds.labels.row)}
    given_rows = ds.labels.source_index[[pos[r] for r in obs.row]]
    assert np.array_equal(obs.matrix(C), arrays["formatted_train_labels_obs.npy"][given_rows].astype(np.int8))
    assert obs.params["equals_spml"] is (given == "spml")
    if given == "spml":  # the literature's observations are exactly our docs/methods.md §1.2 draw
        assert np.array_equal(obs.matrix(C), ds.observations("spml").matrix(C))
    back = tmp_path / "back"
    assert run_cli(["export-formatted", out, "--out", back]) == 0
    got = _load_all(back)
    assert set(got) == set(arrays)
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype, name
        assert np.array_equal(got[name], arr), name


def test_export_other_regime_is_the_literature_draw(tmp_path):
    arrays = write_formatted(tmp_path / "fmt", tmp_path / "img", given="any")
    out = tmp_path / "prepared"
    assert run_cli(["prepare", "--dataset", "voc2012", "--from-formatted", tmp_path / "fmt", "--images",
                    tmp_path / "img", "--out", out, "--regime", "partial-0.5"]) == 0
    back = tmp_path / "back"
    assert run_cli(["export-formatted", out, "--out", back, "--regime", "spml"]) == 0
    got = _load_all(back)
    for prefix in ("train", "val"):
        expected = single_positive(arrays[f"formatted_{prefix}_labels.npy"])
        assert np.array_equal(got[f"formatted_{prefix}_labels_obs.npy"], expected)
    assert run_cli(["export-formatted", out, "--out", tmp_path / "b2", "--regime", "partial-0.5"]) == 0
    obs = np.load(tmp_path / "b2" / "formatted_train_labels_obs.npy")
    assert set(np.unique(obs)) <= {-1.0, 0.0, 1.0} and (obs == Observed.NEGATIVE).any()


def test_native_prepare_exports_the_literature_layout(tmp_path):
    """A VOC fixture prepared from its layout exports image names relative to JPEGImages, sorted."""
    base = tmp_path / "VOC2012"
    write_voc(base, {"train": TRAIN, "val": TEST})
    out = tmp_path / "prepared"
    assert run_cli(["prepare", "--dataset", "voc2012", "--root", base, "--out", out]) == 0
    back = tmp_path / "fmt"
    assert run_cli(["export-formatted", out, "--out", back]) == 0
    got = _load_all(back)
    assert list(got["formatted_train_images.npy"]) == ["2007_000032.jpg", "2008_000001.jpg", "2008_000005.jpg"]
    assert got["formatted_train_labels.npy"].shape == (3, C)
    # and importing the export gives the same labels
    again = tmp_path / "again"
    assert run_cli(["prepare", "--dataset", "voc2012", "--from-formatted", back, "--images", base / "JPEGImages",
                    "--out", again]) == 0
    native = {k + ".jpg": v for k, v in labels_by_key(out).items()}
    assert labels_by_key(again) == native


@pytest.mark.parametrize("how, expected", [
    ("missing", "formatted_train_labels_obs.npy: not found; expected the literature's label matrices"),
    ("shape", "formatted_val_labels.npy: shape (5, 19); expected (5, 20)"),
    ("values", "formatted_train_labels.npy: row 0, column 0 is 2.0; expected values in [0, 1]"),
    ("image", "2008_000003.jpg: cannot read"),
    ("root_too", "--root: not used with --from-formatted"),
    ("no_images", "--from-formatted and --images go together"),
    ("digits", "--from-formatted: dataset 'digits' has no formatted arrays"),
])
def test_bad_formatted_input(tmp_path, capsys, how, expected):
    fmt, img = tmp_path / "fmt", tmp_path / "img"
    write_formatted(fmt, img)
    args = ["prepare", "--dataset", "voc2012", "--from-formatted", fmt, "--images", img, "--out", tmp_path / "p"]
    if how == "missing":
        (fmt / "formatted_train_labels_obs.npy").unlink()
    elif how == "shape":
        np.save(fmt / "formatted_val_labels.npy", np.zeros((5, 19)))
    elif how == "values":
        labels = np.load(fmt / "formatted_train_labels.npy")
        labels[0, 0] = 2
        np.save(fmt / "formatted_train_labels.npy", labels)
    elif how == "image":
        (img / "2008_000003.jpg").unlink()
    elif how == "root_too":
        args += ["--root", tmp_path]
    elif how == "no_images":
        args = args[:5] + args[7:]
    elif how == "digits":
        args[2] = "digits"
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "p").exists()


def test_skip_corrupt_keeps_given_observations_aligned(tmp_path):
    arrays = write_formatted(tmp_path / "fmt", tmp_path / "img", given="any")
    (tmp_path / "img" / "2008_000002.jpg").write_bytes(b"broken")
    out = tmp_path / "prepared"
    assert run_cli(["prepare", "--dataset", "voc2012", "--from-formatted", tmp_path / "fmt", "--images",
                    tmp_path / "img", "--out", out, "--skip-corrupt"]) == 0
    ds = ds_schema.validate(out)
    assert "2008_000002.jpg" not in ds.labels.key and ds.meta.num_rows == 16
    given = dict(zip(arrays["formatted_train_images.npy"], arrays["formatted_train_labels_obs.npy"]))
    obs = ds.observations("spml-given")
    for r, row in zip(obs.row, obs.matrix(C)):
        assert np.array_equal(row, given[ds.labels.key[r]].astype(np.int8))
    back = tmp_path / "back"
    assert run_cli(["export-formatted", out, "--out", back]) == 0
    names = np.load(back / "formatted_train_images.npy")
    exported = np.load(back / "formatted_train_labels_obs.npy")
    assert all(np.array_equal(exported[i], given[n]) for i, n in enumerate(names))
