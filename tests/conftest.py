"""Shared fixtures: small prepared digits datasets, the path of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(args: list[str]) -> int:
    """Run `mlpl ARGS` in-process and return its exit code."""
    from mlpl.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def free_port() -> int:
    """A TCP port free on this machine now (so that test suites running side by side never share one)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared digits dataset (200 official train canvases, 50 test, 64 rows per shard)."""
    out = tmp_path_factory.mktemp("digits") / "small"
    code = run_cli(["prepare", "--dataset", "digits", "--out", out, "--size", "200", "--test-size", "50",
                    "--rows-per-shard", "64", "--regime", "full", "--regime", "spml", "--regime", "none"])
    assert code == 0
    return out


METHOD_REGIMES = ("full", "spml", "none", "partial-0.3", "partial-0.5", "partial-0.7", "spml-unlabeled-0.5")


@pytest.fixture(scope="session")
def digits_methods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared digits dataset with every regime a registered method defaults to."""
    out = tmp_path_factory.mktemp("digits") / "methods"
    regimes = [arg for regime in METHOD_REGIMES for arg in ("--regime", regime)]
    code = run_cli(["prepare", "--dataset", "digits", "--out", out, "--size", "200", "--test-size", "50",
                    "--rows-per-shard", "64", *regimes])
    assert code == 0
    return out


def make_oracle_store(dataset: Path, out: Path, grid: int = 2, seeds: tuple[int, ...] = (0, 1),
                      noise: float = 0.01) -> Path:
    """A complete store whose similarities are the labels plus noise (stands in for a teacher): every view
    of an image sees all its digits, at cos 0.5 against 0.2 for absent ones."""
    import numpy as np
    from mlpl.schemas.dataset import open_dataset
    from mlpl.schemas.store import StoreAttrs, create_store

    ds = open_dataset(dataset)
    n, c = ds.meta.splits["train"], ds.meta.num_classes
    y = ds.labels.matrix(np.arange(n)).astype(np.float32)
    rng = np.random.RandomState(0)
    attrs = StoreAttrs(dataset_fingerprint=ds.meta.fingerprint, dataset_name=ds.meta.name, classes=ds.meta.classes,
                       num_rows=n, rows_per_chunk=ds.meta.rows_per_shard, seeds=seeds,
                       teacher={"arch": "oracle", "logit_scale": 100.0}, views={"grid": grid}, embed_dim=4)
    store = create_store(out, attrs, np.zeros((c, 4), np.float32))
    views = 1 + grid * grid
    sims = 0.2 + 0.3 * y[None, :, None, :] + noise * rng.rand(len(seeds), n, views, c)
    store.sims[...] = sims.astype(np.float16)
    store.done[...] = 1
    return out


@pytest.fixture(scope="session")
def methods_store(digits_methods: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An oracle store (3×3 grid, 2 augment seeds) for `digits_methods`."""
    return make_oracle_store(digits_methods, tmp_path_factory.mktemp("store") / "methods", grid=3)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def teacher_cache(request: pytest.FixtureRequest) -> Path:
    """The built-in digits teacher's cache, shared across test sessions: fitted at most once."""
    import os

    from mlpl.stages.precompute import digits_teacher

    root = Path(os.environ.get("MLPL_TEST_CACHE") or request.config.cache.mkdir("mlpl-cache"))
    digits_teacher.ensure_digits_teacher(root)
    return root
