"""Published weights, offline-first: hf-hub teachers from the Hugging Face cache, the one download decision (flags,
an unreachable host found once, warned about once), the error in under 5 s, `mlpl teacher list`."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
import torch
from mlpl.schemas.errors import InputError
from mlpl.stages import hub
from mlpl.stages.precompute.teacher import TeacherCfg, load_teacher, resolve_weights

from tests.conftest import run_cli

REPO = "mlpl-test/tiny-clip-hub"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def _closed_port_endpoint() -> str:
    """An endpoint nothing listens on (a fresh one per call: the reachability decision is cached per host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def libraries_imported() -> None:
    """open_clip and the hub client imported before a clock starts: the 5 s budget is the failure's, not the
    interpreter's first import of them (seconds on a loaded machine)."""
    import huggingface_hub  # noqa: F401
    import open_clip  # noqa: F401


@pytest.fixture
def online_but_unreachable(monkeypatch) -> str:
    for flag in hub.OFFLINE_FLAGS:
        monkeypatch.delenv(flag, raising=False)
    endpoint = _closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def _hub_snapshot(cache: Path) -> torch.nn.Module:
    """A Hugging Face cache holding an open_clip repository (config with preprocessing, safetensors weights)."""
    import open_clip
    from safetensors.torch import save_file

    base = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = base / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123abcd")
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(7)
    model = open_clip.create_model(f"local-dir:{snapshot}").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    return model


def test_hf_hub_teacher_reaches_open_clip_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _hub_snapshot(tmp_path)
    teacher = load_teacher(TeacherCfg(model=f"hf-hub:{REPO}", cache_dir=str(tmp_path)))
    weights = teacher.description["weights"]
    assert weights["kind"] == "hf-hub" and weights["repo"] == REPO and weights["file"] == "open_clip_model.safetensors"
    assert teacher.mean == (0.5, 0.5, 0.5) and teacher.std == (0.25, 0.25, 0.25)  # the repository's preprocessing
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).view(2, 3, 16, 16)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(teacher.encode_images(x), expected)


def test_hf_hub_teacher_offline_fails_in_seconds_naming_the_files(tmp_path, monkeypatch, libraries_imported):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        resolve_weights(TeacherCfg(model=f"hf-hub:{REPO}", cache_dir=str(tmp_path)))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert f"--model hf-hub:{REPO}: not in the Hugging Face cache" in message
    assert f"{REPO}/open_clip_config.json" in message and f"{REPO}/open_clip_model.safetensors" in message
    assert f"huggingface-cli download {REPO} open_clip_config.json open_clip_model.safetensors" in message


def test_unreachable_hub_is_decided_once_warned_once_and_fails_fast(tmp_path, online_but_unreachable, caplog,
                                                                    libraries_imported):
    caplog.set_level(logging.WARNING, logger="mlpl.stages.hub")
    start = time.perf_counter()
    for _ in range(2):
        with pytest.raises(InputError, match=r"no download is possible .*unreachable"):
            resolve_weights(TeacherCfg(model=f"hf-hub:{REPO}", cache_dir=str(tmp_path)))
        with pytest.raises(InputError, match=r"--pretrained openai: weights of ViT-B-16 are not in the cache and no "
                                             r"download is possible"):
            resolve_weights(TeacherCfg(model="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)))
    assert time.perf_counter() - start < 5
    warnings = [r for r in caplog.records if online_but_unreachable in r.getMessage()]
    assert len(warnings) == 1


def test_hf_hub_as_pretrained_points_at_model():
    with pytest.raises(InputError, match=rf"pass it as --model hf-hub:{REPO} \(without --pretrained\)"):
        resolve_weights(TeacherCfg(model="ViT-B-16", pretrained=f"hf-hub:{REPO}"))
    with pytest.raises(InputError, match="brings its own weights; drop --pretrained"):
        resolve_weights(TeacherCfg(model=f"hf-hub:{REPO}", pretrained="openai"))


def test_precompute_with_an_hf_hub_teacher(digits_small, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_snapshot(tmp_path / "hub")
    out = tmp_path / "store"
    assert run_cli(["precompute-clip", "--dataset", digits_small, "--out", out, "--model", f"hf-hub:{REPO}",
                    "--grid", "2", "--workers", "1", "--batch-size", "64"]) == 0
    from mlpl.schemas.store import open_store

    store = open_store(out)
    assert store.is_complete() and store.attrs.teacher["weights"]["repo"] == REPO


def test_teacher_list_marks_cached_weights(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _hub_snapshot(tmp_path)
    assert run_cli(["teacher", "list", "*", "--cache-dir", tmp_path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("digits")
    assert any(line.startswith("ViT-L-14 ") and "openai" in line and "not cached" in line for line in lines)
    assert any(line.startswith(f"hf-hub:{REPO} ") and "cached " in line for line in lines)
    assert run_cli(["teacher", "list", "--cached", "--cache-dir", tmp_path]) == 0
    cached = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in cached[1:-1]] == [f"hf-hub:{REPO}"]
