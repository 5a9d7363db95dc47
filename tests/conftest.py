"""Shared fixtures: small prepared digits datasets, the path of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(args: list[str]) -> int:
    """Run `mlpl ARGS` in-process and return its exit code."""
    from pipeline.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared digits dataset (200 official train canvases, 50 test, 64 rows per shard)."""
    out = tmp_path_factory.mktemp("digits") / "small"
    code = run_cli(["prepare", "--dataset", "digits", "--out", out, "--size", "200", "--test-size", "50",
                    "--rows-per-shard", "64", "--regime", "full", "--regime", "spml", "--regime", "none"])
    assert code == 0
    return out


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def teacher_cache(request: pytest.FixtureRequest) -> Path:
    """The built-in digits teacher's cache, shared across test sessions: fitted at most once."""
    import os

    from stages.precompute import digits_teacher

    root = Path(os.environ.get("MLPL_TEST_CACHE") or request.config.cache.mkdir("mlpl-cache"))
    digits_teacher.ensure_digits_teacher(root)
    return root
