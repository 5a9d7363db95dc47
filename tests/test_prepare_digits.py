"""The built-in digits world and the prepared-dataset contract: determinism, pools, shards, regimes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from mlpl.schemas.errors import InputError
from mlpl.stages import digits
from PIL import Image

from tests.conftest import run_cli


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pools_are_disjoint_and_cover_every_digit():
    pools = digits.digit_pools()
    _, targets = digits.load_source_digits()
    names = list(pools)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.intersect1d(pools[a], pools[b]).size
    assert sum(len(p) for p in pools.values()) == len(targets)
    for p in pools.values():
        assert set(targets[p].tolist()) == set(range(10))


def test_prepare_is_byte_identical(tmp_path, digits_small):
    out = tmp_path / "again"
    args = ["prepare", "--dataset", "digits", "--out", out, "--size", "200", "--test-size", "50",
            "--rows-per-shard", "64", "--regime", "full", "--regime", "spml", "--regime", "none"]
    assert run_cli(args) == 0
    assert _files(out) == _files(digits_small)


def test_prepared_digits_validates_and_matches_labels(digits_small):
    ds = ds_schema.validate(digits_small)
    assert ds.meta.splits == {"train": 160, "val": 40, "test": 50}
    assert ds.meta.classes == digits.CLASSES
    assert set(ds.meta.regimes) == {"full", "spml", "none"}
    # splits contiguous, each starting a new shard of ≤ 64 rows
    assert [s.split for s in ds.shards] == ["train"] * 3 + ["val"] + ["test"]
    assert all(1 <= len(lbl) <= 4 for lbl in ds.labels.labels)
    # the shard members: original PNG bytes + row, in row order
    first = ds.shards[0]
    with tarfile.open(digits_small / "shards" / first.name) as tar:
        names = tar.getnames()
        assert names[:2] == ["000000000.png", "000000000.row"]
        assert len(names) == 2 * first.num_samples
        img = Image.open(io.BytesIO(tar.extractfile(names[0]).read()))
        assert img.size == (64, 64) and img.mode == "RGB"
        assert tar.extractfile(names[1]).read() == b"0"


def test_observations_cover_train_rows(digits_small):
    ds = ds_schema.open_dataset(digits_small)
    train_rows = ds.labels.rows_of("train")
    full = ds.observations("full").matrix(10)
    spml = ds.observations("spml").matrix(10)
    y = ds.labels.matrix(train_rows)
    np.testing.assert_array_equal(full, np.where(y == 1, 1, -1))
    assert ((spml == 1).sum(axis=1) == 1).all() and not (spml == -1).any()
    assert ((spml == 1) <= (y == 1)).all()
    assert (ds.observations("none").matrix(10) == 0).all()
    assert ds.observations("spml").params == {"regime": "spml", "seed": 1200}


def test_spml_drawn_in_source_order_before_holdout(digits_small):
    # The single positives of the train rows equal those of the whole official train split drawn in
    # source order (docs/methods.md §1.2: sampling precedes the validation split).
    from mlpl.stages.prepare.observations import official_train_labels, single_positive

    ds = ds_schema.open_dataset(digits_small)
    rows, y = official_train_labels(ds.labels)
    whole = single_positive(y)
    by_row = dict(zip(rows.tolist(), whole))
    obs = ds.observations("spml")
    for r, pos in zip(obs.row, obs.positives):
        assert np.flatnonzero(by_row[int(r)] == 1).tolist() == pos.tolist()


def test_observe_adds_regime(tmp_path, digits_small):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_small, copy)
    assert run_cli(["observe", copy, "--regime", "partial-0.3", "--regime", "spml-unlabeled-0.5"]) == 0
    meta = json.loads((copy / "dataset.json").read_text())
    assert {"partial-0.3", "spml-unlabeled-0.5"} <= set(meta["regimes"])
    ds_schema.validate(copy)
    obs = ds_schema.read_observations(copy, "partial-0.3").matrix(10)
    assert 0.2 < (obs != 0).mean() < 0.4


def test_fingerprint_detects_tampering(tmp_path, digits_small):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_small, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    meta["fingerprint"] = "0" * 32
    (copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="fingerprint"):
        ds_schema.validate(copy)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "digitz"], "did you mean 'digits'"),
        (["--dataset", "digits", "--regime", "partial-2"], "--regime"),
        (["--dataset", "digits", "--root", "/nonexistent"], "--root"),
        (["--dataset", "digits", "--size", "3"], "--size"),
        (["--dataset", "digits", "--rows-per-shard", "0"], "--rows-per-shard"),
    ],
)
def test_bad_options_exit_2_and_leave_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run_cli(["prepare", "--out", out, *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_typer_usage_error_exits_2(capsys):
    assert run_cli(["prepare", "--no-such-option"]) == 2


def test_every_command_has_help(capsys):
    from mlpl.cli import app
    from typer.main import get_command

    cli = get_command(app)
    for name in cli.commands:
        assert run_cli([name, "--help"]) == 0, name
