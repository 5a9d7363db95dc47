"""Training with timm and open_clip backbones end to end on the digits world: given weights files (tiny stand-ins for
AEVLP Table 6's ConvNeXt-L and CLIP ViT-L/14 rows), both heads, a resume, the input config the stream uses and
records, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from mlpl.schemas import run as run_schema
from mlpl.stages.train.backbones import get_data_cfg

from tests.conftest import run_cli

TINY = ["--method", "an", "--epochs", "2", "--batch-size", "32", "--image-size", "32", "--workers", "0",
        "--max-batches", "2"]
TOWER = "mlpl-test-train-vit"
TOWER_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random-weight checkpoints as users have them: timm's with its ImageNet classifier (the ConvNeXt one wrapped
    as {'model': ...} like the original release), a whole open_clip CLIP as safetensors."""
    import open_clip
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    (folder / f"{TOWER}.json").write_text(json.dumps(TOWER_CFG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    out = {"convnext": folder / "convnext_atto.pth", "vit": folder / "vit.safetensors",
           "clip": folder / "clip.safetensors"}
    torch.save({"model": timm.create_model("convnext_atto").state_dict()}, out["convnext"])
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(out["vit"]))
    clip = open_clip.create_model(TOWER)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out["clip"]))
    return out


@pytest.mark.parametrize(("backbone", "file", "head"), [
    ("timm:convnext_atto", "convnext", "boostlu"),  # stands in for timm:convnext_large.fb_in22k
    (f"open_clip:{TOWER}", "clip", "linear"),  # stands in for open_clip:ViT-L-14 (BoostLU on it: test_backbones.py)
])
def test_train_with_given_weights(digits_small, weights, tmp_path, backbone, file, head):
    out = tmp_path / "run"
    code = run_cli(["train", "--dataset", digits_small, "--out", out, "--backbone", backbone,
                    "--backbone-weights", weights[file], "--head", head, *TINY])
    assert code == 0
    assert run_schema.validate(out).epochs_run == 2
    recorded = tomllib.loads((out / "config.toml").read_text())
    data = get_data_cfg(backbone, image_size=32)
    assert (recorded["image_size"], tuple(recorded["mean"]), tuple(recorded["std"]), recorded["interpolation"]) == (
        32, data.mean, data.std, data.interpolation)


def test_stream_uses_the_backbones_mean_and_std_and_a_resume_continues(digits_small, weights, tmp_path,
                                                                        monkeypatch):
    from mlpl.stages.train import loop

    args = ["train", "--dataset", digits_small, "--backbone", "timm:vit_tiny_patch16_224", "--backbone-weights",
            weights["vit"], "--head", "boostlu", *TINY]
    used = []
    normalise = loop.model_input

    def record_normalisation(batch, device, mean, std):
        used.append((tuple(batch["image"].shape[-2:]), mean, std))
        return normalise(batch, device, mean, std)

    monkeypatch.setattr(loop, "model_input", record_normalisation)
    assert run_cli([*args, "--out", tmp_path / "ref"]) == 0
    data = get_data_cfg("timm:vit_tiny_patch16_224", image_size=32)
    assert data.mean == data.std == (0.5, 0.5, 0.5)  # timm's data config of the ViT, not ImageNet's
    assert used and set(used) == {((32, 32), data.mean, data.std)}
    monkeypatch.setattr(loop, "model_input", normalise)
    original = loop.Trainer.train_epoch

    def crash_in_epoch_two(self, model, opt, epoch, *a, **k):
        if epoch == 2:
            raise RuntimeError("simulated crash")
        return original(self, model, opt, epoch, *a, **k)

    monkeypatch.setattr(loop.Trainer, "train_epoch", crash_in_epoch_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli([*args, "--out", tmp_path / "resumed"])
    assert not (tmp_path / "resumed" / "summary.json").exists()
    monkeypatch.setattr(loop.Trainer, "train_epoch", original)
    assert run_cli([*args, "--out", tmp_path / "resumed"]) == 0
    val = [[r for r in run_schema.read_metrics(tmp_path / run) if r["split"] == "val"] for run in ("ref", "resumed")]
    assert val[0] == val[1]


@pytest.mark.parametrize(("extra", "message"), [
    (["--backbone", "timm:convnxt_atto"], "did you mean 'timm:convnext_atto'"),
    (["--backbone", "timm:resnet10t", "--backbone-weights", "vit"], "does not fit backbone 'timm:resnet10t'"),
    (["--backbone", "timm:resnet10t", "--mean", "0.5,0.5"], "--mean '0.5,0.5': expected three numbers"),
    (["--backbone", "small-cnn", "--std", "0.5,0,0.5"], "--std must be three numbers > 0"),
    (["--backbone", "timm:resnet10t", "--backbone-weights", "nowhere.pth"], "nowhere.pth is not a file"),
])
def test_bad_backbone_input_fails_clearly_and_writes_nothing(digits_small, weights, tmp_path, capsys, extra, message):
    extra = [str(weights[a]) if a in weights else a for a in extra]
    out = tmp_path / "run"
    assert run_cli(["train", "--dataset", digits_small, "--out", out, *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()
