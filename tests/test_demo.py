"""`mlpl demo --smoke`: the whole pipeline (prepare → teacher → store → a sweep of four methods → report, plots)."""

from __future__ import annotations

from tests.conftest import run_cli


def test_demo_smoke(tmp_path, teacher_cache, monkeypatch, capsys):
    monkeypatch.setenv("MLPL_CACHE", str(teacher_cache))
    out = tmp_path / "demo"
    assert run_cli(["demo", "--smoke", "--out", out]) == 0
    printed = capsys.readouterr().out
    for method in ("bce-full", "an", "gr", "aevlp"):
        assert f"| {method}" in printed
        assert (out / "runs" / f"{method}-seed0" / "summary.json").exists()
    assert "mAP" in printed and "pseudo_precision" in printed and "| runs |" in printed
    for plot in ("probabilities", "val_map", "pseudo_quality"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert (out / "results.md").read_text().count("\n") >= 6
    # a second call reuses the dataset, store and finished runs
    assert run_cli(["demo", "--smoke", "--out", out]) == 0
