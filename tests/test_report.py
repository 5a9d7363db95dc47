"""`mlpl report`: mean ± std tables (Table-1 layout, run counts, four formats), plots, and its bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from mlpl.schemas import run as run_schema

from tests.conftest import run_cli


def fake_run(folder: Path, method: str, seed: int, test_map: float, dataset: str = "digits",
             fingerprint: str = "fp-a", delta_neg: float = 0.5, cf1: float = 50.0) -> Path:
    """A finished run folder written through the run schema's own writers (no training)."""
    folder.mkdir(parents=True)
    metrics = run_schema.SplitMetrics(map=test_map, cf1=cf1, of1=40.0, macro_f1=30.0, hamming=0.25)
    summary = run_schema.RunSummary(method=method, dataset=dataset, regime="spml", seed=seed, best_epoch=2,
                                    val=metrics, test=metrics, epochs_run=2,
                                    pseudo_quality={"precision": 90.0 + seed, "recall": 40.0})
    run_schema.write_summary(folder, summary)
    config = {"method": method, "seed": seed, "out": str(folder), "regime": "spml",
              "pseudo_params": {"delta_neg": delta_neg}, "dataset_info": {"name": dataset, "fingerprint": fingerprint}}
    (folder / run_schema.CONFIG_TOML).write_text(run_schema.dump_toml(config))
    for epoch, value in ((1, test_map - 4), (2, test_map)):
        run_schema.append_metrics(folder, {"epoch": epoch, "split": "train", "loss": 0.5, "pseudo_precision": 80.0,
                                           "pseudo_recall": 30.0 + epoch, "pseudo_acc_precision": 75.0,
                                           "pseudo_acc_recall": 35.0 + epoch})
        run_schema.append_metrics(folder, {"epoch": epoch, "split": "val", "map": value})
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, (an, aevlp) in enumerate(((60.0, 80.0), (62.0, 81.0), (64.0, 85.0))):
        fake_run(root / f"an-seed{seed}", "an", seed, an)
        fake_run(root / f"aevlp-seed{seed}", "aevlp", seed, aevlp)
    return root


def test_markdown_table_mean_std_and_counts(runs, capsys):
    assert run_cli(["report", runs]) == 0
    out = capsys.readouterr().out
    # AN: 60, 62, 64 → mean 62, sample std 2; AEVLP: 80, 81, 85 → mean 82, std sqrt(7) = 2.6458
    assert "| an     | 62.00 ± 2.00 | 3    |" in out
    assert "| aevlp  | 82.00 ± 2.65 | 3    |" in out
    assert out.splitlines()[0].split("|")[1:4] == [" method ", " mAP          ", " runs "]


def test_formats_and_metrics(runs, capsys):
    assert run_cli(["report", runs, "--format", "json", "--metrics", "map,cf1,pseudo_precision"]) == 0
    cells = json.loads(capsys.readouterr().out)
    an = {c["metric"]: c for c in cells if c["method"] == "an"}
    assert an["map"]["values"] == [60.0, 62.0, 64.0] and an["map"]["runs"] == 3
    assert an["pseudo_precision"]["mean"] == pytest.approx(91.0)
    assert run_cli(["report", runs, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "method,dataset,split,metric,mean,std,runs"
    assert "an,digits,test,map,62.0,2.0,3" in lines
    assert run_cli(["report", runs, "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"62.00 $\pm$ 2.00" in latex and r"\begin{tabular}{lrr}" in latex


def test_datasets_are_columns(tmp_path, capsys):
    fake_run(tmp_path / "a" / "an-0", "an", 0, 60.0, dataset="digits")
    fake_run(tmp_path / "b" / "an-0", "an", 0, 70.0, dataset="voc2007", fingerprint="fp-voc")
    assert run_cli(["report", tmp_path / "a", tmp_path / "b"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "digits mAP" in header and "voc2007 mAP" in header and "voc2007 runs" in header


def test_group_by_config_key(tmp_path, capsys):
    for seed in (0, 1):
        for delta in (0.3, 0.7):
            fake_run(tmp_path / f"d{delta}-{seed}", "aevlp", seed, 70 + 10 * delta + seed, delta_neg=delta)
    assert run_cli(["report", tmp_path, "--group-by", "method,pseudo_params.delta_neg"]) == 0
    out = capsys.readouterr().out
    assert "| aevlp  | 0.3                     | 73.50 ± 0.71 | 2    |" in out


def test_plots_png_and_svg(runs, tmp_path):
    import numpy as np

    for run in runs.iterdir():
        run_schema.write_predictions(run, "test", np.arange(4), np.random.rand(4, 3), np.eye(4, 3))
    plots = tmp_path / "plots"
    assert run_cli(["report", runs, "--plots", plots]) == 0
    for name in ("val_map", "probabilities", "pseudo_quality"):
        assert (plots / f"{name}.png").stat().st_size > 1000
        assert (plots / f"{name}.svg").read_text().startswith("<?xml")


def test_many_groups_wrap_their_panels_and_put_the_legend_beside_the_axes(tmp_path):
    """29 methods (the digits Table 1): probability panels 6 a row; the validation legend in two columns beside
    the axes. Figure sizes in pixels follow from the layout rule (110 dpi)."""
    import numpy as np
    from mlpl.stages.evaluate.plots import plot_probability_distributions
    from PIL import Image

    rng = np.random.default_rng(0)
    results = {f"m{i}": (rng.random((20, 3)), rng.random((20, 3)) < 0.3) for i in range(13)}
    png = next(p for p in plot_probability_distributions(results, tmp_path / "probs") if p.suffix == ".png")
    assert Image.open(png).size == (round(6 * 3.2 * 110), round(3 * 2.8 * 110))  # 13 panels: 3 rows of 6
    few = {k: results[k] for k in ("m0", "m1")}
    png = next(p for p in plot_probability_distributions(few, tmp_path / "few") if p.suffix == ".png")
    assert Image.open(png).size == (round(2 * 3.2 * 110), round(2.8 * 110))


def test_metric_against_swept_parameter(tmp_path):
    import numpy as np

    for seed in (0, 1):
        for delta in (0.1, 0.5, 0.9):
            run = fake_run(tmp_path / "runs" / f"d{delta}-{seed}", "aevlp", seed, 70 + delta, delta_neg=delta)
            run_schema.write_predictions(run, "test", np.arange(2), np.random.rand(2, 3), np.eye(2, 3))
    assert run_cli(["report", tmp_path / "runs", "--plots", tmp_path / "plots"]) == 0
    assert (tmp_path / "plots" / "map_vs_pseudo_params_delta_neg.png").exists()
    assert (tmp_path / "plots" / "map_vs_pseudo_params_delta_neg.svg").exists()


@pytest.mark.parametrize("args, message", [
    (["--metrics", "mAp"], "--metrics: unknown metric(s) ['mAp']"),
    (["--format", "xlsx"], "--format: 'xlsx'"),
    (["--group-by", "method,lr_typo"], "no key 'lr_typo'"),
    (["--split", "train"], "--split: 'train'"),
])
def test_bad_options(runs, args, message, capsys):
    assert run_cli(["report", runs, *args]) == 2
    assert message in capsys.readouterr().err


def test_paths_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(["report", tmp_path / "empty"]) == 2
    assert "no finished run found" in capsys.readouterr().err
    assert run_cli(["report", tmp_path / "missing"]) == 2
    assert "missing: no such run folder" in capsys.readouterr().err


def test_two_prepared_datasets_in_one_cell_is_refused(tmp_path, capsys):
    fake_run(tmp_path / "small" / "an-0", "an", 0, 60.0, fingerprint="fp-small")
    fake_run(tmp_path / "large" / "an-0", "an", 0, 70.0, fingerprint="fp-large")
    assert run_cli(["report", tmp_path / "small", tmp_path / "large"]) == 2
    err = capsys.readouterr().err
    assert "2 different prepared datasets named 'digits'" in err and "'method': 'an'" in err


def test_summary_fields_roundtrip_through_report(runs):
    from mlpl.stages.evaluate.runs import find_runs

    found = find_runs([runs])
    assert len(found) == 6
    assert asdict(found[0].summary)["test"]["map"] in (60.0, 62.0, 64.0, 80.0, 81.0, 85.0)
    assert found[0].config["pseudo_params.delta_neg"] == 0.5
