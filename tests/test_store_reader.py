"""The one store reader of stage two: typed view and teacher attributes, a picklable per-seed chunk reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas.errors import InputError
from mlpl.schemas.store import SeedChunks, StoreAttrs, TeacherAttrs, ViewAttrs, create_store, open_store

VIEWS = {"grid": 2, "overlap": 0.2, "flip": True, "normalize": "clip", "image_size": 32, "interpolation": "bilinear",
         "weak_aug": False, "order": "global, then tiles row-major", "weak_aug_p": 0.0}


def small_store(path: Path) -> np.ndarray:
    attrs = StoreAttrs(dataset_fingerprint="f", dataset_name="d", classes=("a", "b", "c"), num_rows=10,
                       rows_per_chunk=4, seeds=(0, 1), teacher={"model": "digits", "logit_scale": 50.0},
                       views=VIEWS, embed_dim=2)
    store = create_store(path, attrs, np.zeros((3, 2), np.float32))
    sims = np.random.RandomState(0).rand(2, 10, 5, 3).astype(np.float16)
    store.sims[...] = sims
    return sims


def test_view_attributes_read_what_stage_one_writes() -> None:
    from mlpl.stages.precompute.views import ViewCfg

    written = ViewCfg(grid=3, weak_aug=True).to_dict()
    typed = ViewAttrs.from_dict(written)
    assert typed.recorded == written
    assert {k: v for k, v in typed.__dict__.items() if k != "recorded"} == written


def test_typed_attributes(tmp_path: Path) -> None:
    small_store(tmp_path / "s")
    attrs = open_store(tmp_path / "s").attrs
    assert attrs.view_attrs == ViewAttrs(**VIEWS) and attrs.num_views == 5 and attrs.view_attrs.recorded == VIEWS
    assert attrs.teacher_attrs == TeacherAttrs(model="digits", logit_scale=50.0,
                                               recorded={"model": "digits", "logit_scale": 50.0})
    with pytest.raises(InputError, match="malformed view attributes"):
        ViewAttrs.from_dict({"grid": "4"})
    assert ViewAttrs.from_dict({"grid": 4, "tiles": 3}).recorded["tiles"] == 3  # a newer key is kept, not lost


def test_seed_chunks_read_whole_chunks_and_survive_pickling(tmp_path: Path) -> None:
    sims = small_store(tmp_path / "s")
    reader = open_store(tmp_path / "s").seed_chunks(1)
    assert reader.num_chunks == 3
    np.testing.assert_array_equal(reader.read(2), sims[1, 8:10])
    copy = pickle.loads(pickle.dumps(reader))
    assert isinstance(copy, SeedChunks) and copy._array is None
    chunks = list(copy)
    assert [r.tolist() for r, _ in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(np.concatenate([s for _, s in chunks]), sims[1].astype(np.float32))
    assert chunks[0][1].dtype == np.float32
