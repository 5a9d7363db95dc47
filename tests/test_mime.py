"""MIME (docs/methods.md §3.9): the KL term, the label-query head, the pseudo-positive label state, Adamax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlpl.config import resolve_train_cfg
from mlpl.schemas.errors import InputError
from mlpl.schemas.state import load_state
from mlpl.stages.train.heads.mime import MimeHead, MimeHeadCfg, sine_position_embedding
from mlpl.stages.train.labelstate import LabelStateContext, create_label_state, create_label_state_cfg
from mlpl.stages.train.losses import EpochState
from mlpl.stages.train.losses.mime import gaussian_kl
from mlpl.stages.train.models import HeadOutput, create_classifier, create_head_cfg, param_groups
from mlpl.stages.train.optim import create_optimizer

from tests.conftest import run_cli


def test_gaussian_kl_golden() -> None:
    # element (0, 1): ½(1 + 0 − 1 − 0) = 0; element (1, 0.5): ½(0.25 + 1 − 1 − 2·ln 0.5) = 0.818147; mean of the two
    kl = gaussian_kl(mu=torch.tensor([0.0, 1.0]), std=torch.tensor([1.0, 0.5]))
    assert kl.item() == pytest.approx(0.5 * (0.25 + 2 * math.log(2)) / 2, abs=1e-7)
    assert kl.item() == pytest.approx(0.4090736, abs=1e-6)
    assert gaussian_kl(mu=torch.zeros(2, 3, 4), std=torch.ones(2, 3, 4)).item() == 0.0


def test_sine_position_embedding_golden() -> None:
    # 1×2 map, 4 channels: the row half encodes 2π·1/1 (sin 0, cos 1); the column half π (sin 0, cos −1) and 2π
    pos = sine_position_embedding(1, 2, 4)
    torch.testing.assert_close(pos, torch.tensor([[0.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.0, 1.0]]), atol=1e-4, rtol=0)
    assert sine_position_embedding(3, 5, 8).shape == (15, 8)


def _tiny_head(samples: int = 10) -> MimeHead:
    torch.manual_seed(0)
    cfg = MimeHeadCfg(z_dim=2, kl_weight=0.5, samples=samples, heads=2, feedforward_ratio=2.0, dropout=0.0)
    return MimeHead(4, 2, cfg)


def test_per_class_linear_map_golden() -> None:
    head = _tiny_head()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    z = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    # class 0: 1·1 + 2·1 + 0.5 = 3.5; class 1: 3·2 + 4·0 − 0.5 = 5.5
    torch.testing.assert_close(head.classify(z), torch.tensor([[3.5, 5.5]]))


def test_head_trains_through_samples_and_evaluates_at_the_mean() -> None:
    head = _tiny_head(samples=3)
    feature_map = torch.randn(2, 4, 3, 3)
    mu, std = head.posterior(feature_map)
    assert mu.shape == std.shape == (2, 2, 2)
    torch.testing.assert_close(head(feature_map), head.classify(mu))  # deterministic evaluation
    torch.manual_seed(5)
    out = head.forward_train(feature_map)
    torch.manual_seed(5)
    noise = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(out.logits, head.classify((mu + std * noise).mean(dim=0)))
    torch.testing.assert_close(out.regulariser, 0.5 * gaussian_kl(mu=mu, std=std))
    out.logits.sum().backward()
    assert head.query_embed.weight.grad is not None and head.encoder[0].attn.in_proj_weight.grad is not None


def test_classifier_with_the_mime_head_on_a_feature_map() -> None:
    model, _ = create_classifier("small-cnn", 5, pretrained=False, head="mime", family="digits")
    x = torch.randn(2, 3, 32, 32)
    out = model(x, train_outputs=True)
    assert isinstance(out, HeadOutput) and out.logits.shape == (2, 5) and out.regulariser.dim() == 0
    model.eval()
    assert model(x).shape == (2, 5)
    # the backbone at lr, every part of the head (transformer, queries, bottleneck, classifier) at lr·10
    groups = param_groups(model, 1e-4, 10.0)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-3)]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(p.numel() for p in model.head.parameters())


def test_mime_head_on_a_backbone_without_feature_map(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from mlpl.stages.train.backbones import BACKBONE_FAMILIES, Backbone
    from mlpl.stages.train.backbones.timm_models import unsupported_map

    class PooledOnly(Backbone):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise unsupported_map("pooled-only", (x.shape[0], 4))

        def pooled(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.mean(dim=(2, 3)))

    family = dataclasses.replace(BACKBONE_FAMILIES.get("mlpl"), name="pooled", list_models=lambda: ["pooled-only"],
                                 is_model=lambda model: model == "pooled-only", build=lambda model, size: PooledOnly())
    monkeypatch.setitem(BACKBONE_FAMILIES._entries, "pooled", family)
    with pytest.raises(InputError, match=r"--head mime: backbone 'pooled-only' gives features of shape \[1, 4\], "
                                         r"not the feature map \[B, D, h, w\] this head reads; backbones with maps"):
        create_classifier("pooled-only", 3, pretrained=False, head="mime", image_size=32)
    create_classifier("pooled-only", 3, pretrained=False, head="linear", image_size=32)  # linear reads pooled
    with pytest.raises(InputError, match=r"got shape \(2, 4\)\. Backbones with a feature map: CNNs"):
        _tiny_head()(torch.zeros(2, 4))  # pooled features reaching the head at run time


def test_mime_head_settings_out_of_range() -> None:
    with pytest.raises(InputError, match="divisible by heads = 3"):
        create_classifier("small-cnn", 3, pretrained=False, head="mime", head_params={"heads": 3})
    with pytest.raises(InputError, match="head 'mime': kl_weight must be >= 0"):
        create_head_cfg("mime", "voc", {"kl_weight": -1.0})
    assert create_head_cfg("mime", "cub").z_dim == 256 and create_head_cfg("mime", "coco").kl_weight == 1e-4


def _ctx(observed: np.ndarray, epochs: int = 4) -> LabelStateContext:
    return LabelStateContext(observed=observed, family="voc", seed=0, device=torch.device("cpu"), num_epochs=epochs)


def test_pseudo_positives_golden_and_resume() -> None:
    observed = np.array([[1, 0, 0], [0, 0, -1]], dtype=np.int8)
    state = create_label_state("mime", _ctx(observed), {})
    assert [state.wants_train_predictions(EpochState(t, 4)) for t in (1, 2, 3, 4)] == [False, True, True, False]
    probs = np.array([[0.99, 0.96, 0.95], [0.2, 0.951, 0.99]])
    # strictly above 0.95 and unknown: (0, 1) and (1, 1); 0.95 itself, the observed positive and the observed
    # negative stay as they are
    record = state.end_epoch(epoch=EpochState(2, 4), rows=np.array([0, 1]), probs=probs)
    assert record == {"positives": 2.0}
    rows = torch.tensor([0, 1])
    torch.testing.assert_close(state.observed_for(rows, torch.as_tensor(observed).long()),
                               torch.tensor([[1, 1, 0], [0, 1, -1]]))
    # a later epoch's low prediction never turns a pseudo-positive back
    state.end_epoch(epoch=EpochState(3, 4), rows=np.array([0]), probs=np.zeros((1, 3)))
    restored = create_label_state("mime", _ctx(observed), {})
    restored.load_state_dict(state.state_dict())
    torch.testing.assert_close(restored.observed_for(rows, torch.as_tensor(observed).long()),
                               torch.tensor([[1, 1, 0], [0, 1, -1]]))


def test_pseudo_positive_settings() -> None:
    assert create_label_state_cfg("mime", "cub", {}).warmup == 5
    assert create_label_state_cfg("mime", "coco", {}).warmup == 2
    with pytest.raises(InputError, match="label state 'mime': threshold must be in"):
        create_label_state_cfg("mime", "voc", {"threshold": 1.0})
    with pytest.raises(InputError, match="warmup must be >= 1"):
        create_label_state_cfg("mime", "voc", {"warmup": 0})


def test_mime_preset_uses_adamax_and_the_reference_rates() -> None:
    cfg = resolve_train_cfg("mime", "d", "coco2014", "o")
    assert (cfg.optimizer, cfg.lr, cfg.head_lr_mult, cfg.batch_size) == ("adamax", 1e-4, 10.0, 32)
    assert resolve_train_cfg("mime", "d", "nus", "o").batch_size == 16
    assert isinstance(create_optimizer("adamax", [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}]),
                      torch.optim.Adamax)
    with pytest.raises(InputError, match=r"optimizer: unknown optimizer 'adamx'.*did you mean 'adamax'"):
        create_optimizer("adamx", [])


def test_unknown_optimizer_in_a_preset_fails_before_training(digits_methods, tmp_path, capsys) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text('optimizer = "sgd"\n')
    assert run_cli(["train", "--dataset", digits_methods, "--method", "mime", "--preset", preset,
                    "--out", tmp_path / "run", "--epochs", "1", "--max-batches", "1"]) == 2
    assert "unknown optimizer 'sgd'" in capsys.readouterr().err


class _Crash(Exception):
    pass


def test_pseudo_positives_survive_a_crash_and_resume(digits_methods, tmp_path) -> None:
    """Warm-up 1, θ 0.05 on tiny digits: epoch 1's pass turns cells positive; a run killed in epoch 3 resumes with
    them (from `last.pt`) and ends where the uninterrupted run ends."""
    from mlpl.schemas import run as run_schema
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.train.loop import Trainer

    meta = DatasetMeta.from_json(digits_methods / "dataset.json")
    overrides = {"epochs": 3, "batch_size": 16, "image_size": 32, "workers": 0, "max_batches": 2,
                 "label_state_params": {"warmup": 1, "threshold": 0.05}}

    def cfg(out):
        return resolve_train_cfg("mime", str(digits_methods), meta.name, str(out), None, overrides, meta.family)

    whole = Trainer(cfg(tmp_path / "whole")).run()

    def crash_in_epoch_3(phase: str, done: int, total: int) -> None:
        if phase.startswith("epoch 3/"):
            raise _Crash

    with pytest.raises(_Crash):
        Trainer(cfg(tmp_path / "crashed"), progress=crash_in_epoch_3).run()
    saved = load_state(tmp_path / "crashed" / "last.pt")
    assert saved["epoch"] == 2 and int(saved["label_state"]["corrected"].sum()) > 0
    resumed = Trainer(cfg(tmp_path / "crashed")).run()
    assert resumed.test.map == pytest.approx(whole.test.map)
    positives = [r["state_positives"] for r in run_schema.read_metrics(tmp_path / "whole") if r["split"] == "train"]
    assert positives[0] > 0 and positives == sorted(positives)  # permanent: the count never falls
