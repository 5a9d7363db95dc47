"""`mlpl sweep` end to end on a tiny digits world: named run folders, reuse, failures, grids, bad input, kill and
resume; complete run records (config.toml) and their checks; loggers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from mlpl.schemas import run as run_schema

from tests.conftest import make_oracle_store, run_cli

TINY = ["--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "1", "--max-batches", "2"]


def runs_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def store(digits_small, tmp_path_factory) -> Path:
    return make_oracle_store(digits_small, tmp_path_factory.mktemp("store") / "store")


@pytest.fixture(scope="module")
def swept(digits_small, store, tmp_path_factory) -> Path:
    """`an` and `aevlp`, seeds 0-1, one process."""
    out = tmp_path_factory.mktemp("sweep") / "runs"
    assert run_cli(["sweep", "--dataset", digits_small, "--pseudo-store", store, "--methods", "an,aevlp",
                    "--seeds", "0-1", "--out", out, *TINY]) == 0
    return out


def test_sweep_names_runs_by_settings_and_reports(swept, capsys):
    assert sorted(p.name for p in runs_in(swept)) == ["aevlp-seed0", "aevlp-seed1", "an-seed0", "an-seed1"]
    for run in runs_in(swept):
        run_schema.validate(run)
    assert run_cli(["report", swept]) == 0
    table = capsys.readouterr().out
    assert "| an " in table and "| aevlp " in table and table.count("| 2    |") == 2
    assert table.index("| an ") < table.index("| aevlp ")  # the sweep's order (sweep.json), not the path order
    index = json.loads((swept / "sweep.json").read_text())
    assert [r["name"] for r in index["runs"]] == ["an-seed0", "an-seed1", "aevlp-seed0", "aevlp-seed1"]


def test_second_sweep_reads_finished_runs(swept, digits_small, store, capsys):
    stamps = {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs_in(swept)}
    assert run_cli(["sweep", "--dataset", digits_small, "--pseudo-store", store, "--methods", "an,aevlp",
                    "--seeds", "0-1", "--out", swept, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("(finished earlier)") == 4 and "0 trained, 4 finished earlier, 0 failed" in out
    assert stamps == {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs_in(swept)}
    assert sum(r["split"] == "test" for r in run_schema.read_metrics(swept / "an-seed0")) == 1


def test_run_record_is_complete(swept, digits_small, store):
    config = tomllib.loads((swept / "aevlp-seed0" / "config.toml").read_text())
    assert config["method"] == "aevlp" and config["seed"] == 0
    # the typed configs of the parts, resolved with the digits family's values
    resolved = config["resolved"]
    assert {"q1", "q2", "q3"} <= set(resolved["loss"]) and {"tau", "delta_neg"} <= set(resolved["pseudo"])
    assert "head" in resolved and "label_state" in resolved and resolved["family"]["name"] == "digits"
    assert config["run"]["world_size"] == 1 and config["run"]["global_batch"] == 32
    assert config["run"]["optimizer"] == "adam" and config["run"]["head_lr"] == pytest.approx(config["lr"])
    assert config["run"]["normalisation"]["mean"] and config["run"]["augmentation"]["flip"] is True
    assert config["dataset_info"]["fingerprint"] and config["store_info"]["teacher"]["arch"] == "oracle"
    assert config["run"]["mlpl_version"]
    assert "store_info" not in tomllib.loads((swept / "an-seed0" / "config.toml").read_text())


def test_failing_run_is_reported_and_the_rest_continue(digits_small, tmp_path, capsys):
    out = tmp_path / "runs"
    # aevlp needs a store: it fails when it starts, an still runs
    assert run_cli(["sweep", "--dataset", digits_small, "--methods", "aevlp,an", "--out", out, *TINY]) == 1
    captured = capsys.readouterr()
    assert "aevlp-seed0: FAILED (--pseudo-store" in captured.out
    assert "1 trained, 0 finished earlier, 1 failed" in captured.out
    assert (out / "an-seed0" / "summary.json").exists() and not (out / "aevlp-seed0").exists()


def test_grid_over_a_pseudo_labeller_parameter(digits_small, store, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(["sweep", "--dataset", digits_small, "--pseudo-store", store, "--methods", "aevlp",
                    "--grid", "pseudo_params.delta_neg=0.0,0.5", "--set", "pseudo_params.tau=0.02",
                    "--out", out, *TINY]) == 0
    values = {}
    for run in runs_in(out):
        config = tomllib.loads((run / "config.toml").read_text())
        values[run.name] = (config["pseudo_params"]["delta_neg"], config["pseudo_params"]["tau"])
    assert values == {"aevlp-delta_neg=0.0-seed0": (0.0, 0.02), "aevlp-delta_neg=0.5-seed0": (0.5, 0.02)}
    assert run_cli(["report", out, "--plots", tmp_path / "plots"]) == 0
    assert (tmp_path / "plots" / "map_vs_pseudo_params_delta_neg.svg").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "an,aevpl"], "--method: unknown method 'aevpl'"),
    (["--regime", "spm"], "--regime: dataset"),
    (["--set", "pseudo_params.tua=1"], "unknown option(s) ['tua']"),
    (["--set", "lr_typo=1"], "--set: unknown key 'lr_typo'"),
    (["--grid", "pseudo_params.top_k=one,two"], "option 'top_k' must be int"),
    (["--grid", "epochs=2,x"], "key 'epochs' must be int"),
    (["--seeds", "3-1"], "--seeds: '3-1'"),
    (["--grid", "seed=1,2"], "takes its seeds from --seeds"),
    (["--methods", "an,partial-bce"], "regime 'partial-0.5' is not prepared"),
    (["--logger", "tensorbord"], "did you mean 'tensorboard'"),
])
def test_bad_input_writes_nothing(digits_small, store, tmp_path, capsys, args, message):
    out = tmp_path / "runs"
    code = run_cli(["sweep", "--dataset", digits_small, "--pseudo-store", store, "--methods", "aevlp",
                    "--out", out, *TINY, *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_refuses_another_configuration_without_touching_the_folder(swept, digits_small, capsys):
    run = swept / "an-seed0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert run_cli(["train", "--dataset", digits_small, "--method", "gr", "--out", run, *TINY]) == 2
    err = capsys.readouterr().err
    assert "differing in" in err and "method ('an' → 'gr')" in err and "loss" in err
    assert before == {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_a_record_from_before_a_setting_existed_is_the_same_run_at_its_default(swept, digits_small, tmp_path,
                                                                                capsys):
    """A run folder written before `decode` existed: rerunning it reports it; asking for another value is refused."""
    import shutil
    import tomllib

    run = tmp_path / "old"
    shutil.copytree(swept / "an-seed0", run)
    text = (run / "config.toml").read_text()
    assert 'decode = "workers"' in text
    (run / "config.toml").write_text(text.replace('decode = "workers"\n', ""))
    assert "decode" not in tomllib.loads((run / "config.toml").read_text())
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", run, *TINY]) == 0
    assert "an on digits: best epoch" in capsys.readouterr().out
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", run, "--decode", "device",
                    *TINY]) == 2
    assert "decode (None → 'device')" in capsys.readouterr().err


def test_train_reports_a_finished_run(swept, digits_small, store, capsys):
    run = swept / "aevlp-seed1"
    before = (run / "metrics.jsonl").read_bytes()
    assert run_cli(["train", "--dataset", digits_small, "--method", "aevlp", "--pseudo-store", store, "--seed", "1",
                    "--out", run, *TINY]) == 0
    assert "aevlp on digits: best epoch 1" in capsys.readouterr().out
    assert (run / "metrics.jsonl").read_bytes() == before


def test_loggers(digits_small, tmp_path):
    out = tmp_path / "run"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", out, "--logger", "csv",
                    "--logger", "tensorboard", *TINY]) == 0
    val = {r["epoch"]: r["map"] for r in run_schema.read_metrics(out) if r["split"] == "val"}
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,split,metric,value"
    assert {int(e): float(v) for e, split, metric, v in (line.split(",") for line in lines[1:])
            if split == "val" and metric == "map"} == val
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert {e.step: e.value for e in events.Scalars("val/map")} == pytest.approx(val, abs=1e-4)  # stored as fp32
    assert "train/loss" in events.Tags()["scalars"]


def test_wandb_logger_offline(digits_small, tmp_path, monkeypatch):
    """`--logger wandb` works without a network: an offline run in the run folder holding the epochs' metrics."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert run_cli(["train", "--dataset", digits_small, "--method", "an", "--out", out, "--logger", "wandb",
                    *TINY]) == 0
    logs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    data = logs[0].read_bytes()  # protobuf records: keys and JSON-encoded values are stored as text
    for key in (b"val/map", b"train/loss", b"test_map", b"lr"):
        assert key in data
    test_map = run_schema.read_summary(out).test.map
    assert repr(test_map).encode() in data


def test_killed_sweep_resumes(digits_small, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "mlpl.cli", "sweep", "--dataset", str(digits_small), "--methods", "an",
           "--seeds", "0-2", "--out", str(out), "--epochs", "2", "--batch-size", "32", "--image-size", "32",
           "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "an-seed0" / "summary.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = (out / "an-seed0" / "summary.json").stat().st_mtime_ns
    assert not (out / "an-seed2" / "summary.json").exists(), "the sweep finished before it could be killed"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "an-seed0: test mAP" in done.stdout and "finished earlier" in done.stdout
    assert (out / "an-seed0" / "summary.json").stat().st_mtime_ns == first
    for seed in range(3):
        assert sum(r["split"] == "test" for r in run_schema.read_metrics(out / f"an-seed{seed}")) == 1
