"""The stage-two training loop: stream ⨝ store → pseudo-labels → loss → Adam, with validation,
best-checkpointing, early stopping (docs/methods.md §1.6), `metrics.jsonl`, resumable `last.pt`, `summary.json`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlpl.schemas import run as run_schema
from mlpl.schemas.dataset import open_dataset
from mlpl.schemas.errors import InputError
from mlpl.schemas.store import Store, check_matches_dataset, open_store
from mlpl.stages.accumulate import AccumulatedPseudoLabels
from mlpl.stages.collectives import share_buffers_, sum_over_ranks
from mlpl.stages.evaluate.pseudo_quality import PseudoLabelQuality
from mlpl.stages.runtime import (
    cores_per_process,
    init_distributed,
    pick_device,
    resolve_workers,
    seed_everything,
    world_from_env,
)
from mlpl.stages.train import record as run_record
from mlpl.stages.train.checkpoint import load_best, load_last, save_best, save_last, training_state
from mlpl.stages.train.config import TrainCfg, should_stop
from mlpl.stages.train.labelstate import LabelStateContext, get_label_state_info
from mlpl.stages.train.loggers import Loggers, check_loggers
from mlpl.stages.train.losses import EpochState, get_loss_info
from mlpl.stages.train.models import Classifier, HeadOutput
from mlpl.stages.train.parts import build_parts
from mlpl.stages.train.predict import predict, split_metrics
from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS
from mlpl.stages.train.resolved import RESOLVED_KEY, resolve_parts
from mlpl.stages.train.stream import StreamCfg, model_input, to_device, train_loader

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def _split_metrics(m: dict[str, float]) -> run_schema.SplitMetrics:
    keys = run_schema.METRIC_KEYS
    return run_schema.SplitMetrics(**{k: m[k] for k in keys}, extra={k: v for k, v in m.items() if k not in keys})


class Trainer:
    """One training run in `cfg.out`; `run()` resumes from `last.pt` when it exists."""

    def __init__(self, cfg: TrainCfg, progress: ProgressFn | None = None,
                 online_sims: Callable[[dict[str, torch.Tensor], int], torch.Tensor] | None = None,
                 opened: dict[Any, Any] | None = None) -> None:
        """`online_sims(batch, epoch)`, when given, computes the similarities inside the training step
        instead of reading them from the store (the reference code's way; kept for comparison only).
        `opened` keeps datasets and stores open across runs of one process (a sweep passes the same dict)."""
        self.cfg = cfg
        self.opened = opened if opened is not None else {}
        check_loggers(cfg.loggers)
        self.online_sims = online_sims
        self.out = Path(cfg.out)
        self.progress = progress or (lambda phase, done, total: None)
        world = world_from_env()
        self.rank, self.world = world.rank, world.world
        self.device = pick_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)
        # launched by torchrun: one process per GPU (nccl), or per CPU slot (gloo)
        init_distributed(cuda=self.device.type == "cuda")
        self.amp = self.device.type == "cuda"
        self.workers = resolve_workers(cfg.workers)
        if self.device.type == "cpu":
            # leave the DataLoader workers their cores: oversubscribed intra-op threads slow CPU training ~5×
            torch.set_num_threads(max(1, cores_per_process() - self.workers))
        self.ds = self._open("dataset", cfg.dataset, open_dataset)
        start, stop = self.ds.meta.split_range("train")
        self.train_start, self.n_train = start, stop - start
        # a user's own data may hold only weak labels for train rows: nothing is measured against full labels there
        self.unknown_train = self.ds.labels.describe_unknown(np.arange(start, stop))
        self.has_val = self.ds.meta.splits.get("val", 0) > 0
        self.observed = self._observed()
        # every part's typed config, resolved (and checked to fit together) before any work
        self.parts = resolve_parts(cfg, self.ds.meta.expected_positives)
        self.family, self.loss_cfg, self.pseudo_cfg = self.parts.family, self.parts.loss, self.parts.pseudo
        self.state_cfg = self.parts.label_state
        self.loss_info = get_loss_info(cfg.loss)
        self.pseudo_info = PSEUDOLABELLERS.get(cfg.pseudo, option="--pseudo")
        self.state_info = get_label_state_info(cfg.label_state)
        self.store = self._store()
        self.labels = self.state_info.create(LabelStateContext(
            observed=self.observed, family=self.family, seed=cfg.seed, device=self.device,
            read_sims=self.store.seed_chunks if self.store is not None else None,
            store_attrs=self.store.attrs.to_dict() if self.store is not None else None, num_epochs=cfg.epochs,
            store_path=str(self.store.path) if self.store is not None else None,
        ), self.state_cfg)
        self.accumulated = AccumulatedPseudoLabels(self.n_train, self.ds.meta.num_classes)
        self.quality = PseudoLabelQuality(self.n_train, self.ds.meta.num_classes)
        self.data = cfg.data_cfg()  # the backbone's input config: the one place size, mean and std come from
        self.stream = StreamCfg.of(self.data, batch_size=cfg.batch_size, workers=self.workers,
                                   pin_memory=self.device.type == "cuda", decode=cfg.decode, device=str(self.device))

    def _open(self, kind: str, path: str, opener: Callable[[Path], Any]) -> Any:
        key = (kind, str(Path(path).resolve()))
        if key not in self.opened:
            self.opened[key] = opener(Path(path))
        return self.opened[key]

    def record(self) -> dict[str, Any]:
        """The run's `config.toml` (mlpl.stages.train.record): every resolved value it uses."""
        cfg = self.cfg
        parts = {RESOLVED_KEY: self.parts.to_dict()}
        run = {"optimizer": cfg.optimizer, "backbone_lr": cfg.lr, "head_lr": cfg.lr * cfg.head_lr_mult,
               "device": self.device.type, "amp_bfloat16": self.amp,
               "augmentation": {"flip": self.stream.flip, "resize": f"{self.stream.interpolation}, square"},
               "normalisation": {"mean": list(self.stream.mean), "std": list(self.stream.std)},
               "store_seeds_used": self.cfg.pseudo_mode if self.store is not None else "none"}
        return run_record.build_record(cfg, parts, self.ds.meta,
                                       self.store.attrs.to_dict() if self.store is not None else None,
                                       self.world, run)

    def _observed(self) -> np.ndarray:
        obs = self.ds.observations(self.cfg.regime)
        matrix = np.zeros((self.n_train, self.ds.meta.num_classes), dtype=np.int8)
        matrix[obs.row - self.train_start] = obs.matrix(self.ds.meta.num_classes)
        return matrix

    def _store(self) -> Store | None:
        users = ([f"{self.cfg.pseudo!r} pseudo-labels"] if self.pseudo_info.uses_sims else []) + \
                ([f"the {self.cfg.label_state!r} label state"] if self.state_info.reads_store(self.state_cfg) else [])
        if not users:
            return None
        if not self.cfg.pseudo_store:
            raise InputError(f"--pseudo-store: method {self.cfg.method!r} uses {' and '.join(users)} from a store; "
                             "build one with `mlpl precompute-clip` and pass --pseudo-store")
        store = self._open("store", self.cfg.pseudo_store, open_store)
        m = self.ds.meta
        check_matches_dataset(store, m.fingerprint, m.classes, self.n_train)
        if not store.is_complete():
            done = store.done_matrix()
            raise InputError(f"{store.path}: store is incomplete ({int(done.sum())}/{done.size} tasks done); "
                             "rerun `mlpl precompute-clip` with the same options to finish it")
        seeds = len(store.attrs.seeds)
        if self.cfg.pseudo_mode == "dynamic" and self.pseudo_info.uses_sims and seeds < self.cfg.epochs:
            log.warning("%s: %d augment seed(s) for %d epochs of dynamic pseudo-labels: epochs e and e + %d read "
                        "the same views; build the store with --seeds %d for a new seed every epoch",
                        store.path, seeds, self.cfg.epochs, seeds, self.cfg.epochs)
        return store

    def store_seed_index(self, epoch: int) -> int:
        """Augment seed of a 1-based epoch: e mod S (dynamic/accumulated) or always the first (fixed)."""
        if self.store is None or self.cfg.pseudo_mode == "fixed":
            return 0
        return (epoch - 1) % len(self.store.attrs.seeds)

    def model_meta(self) -> run_schema.ModelMeta:
        """What the best weights need to be used on new images (class names, preprocessing, backbone, threshold)."""
        cfg, meta = self.cfg, self.ds.meta
        return run_schema.ModelMeta(
            classes=meta.classes, image_size=self.stream.image_size, mean=tuple(self.stream.mean),
            std=tuple(self.stream.std), interpolation=self.stream.interpolation, backbone=cfg.backbone,
            head=cfg.head, head_params=dict(cfg.head_params),
            family=cfg.family, threshold=cfg.threshold, method=cfg.method, dataset=meta.name,
            dataset_fingerprint=meta.fingerprint,
        )

    # ------------------------------------------------------------------ steps
    def _pseudo(self, batch: dict[str, torch.Tensor], observed: torch.Tensor, gen: torch.Generator,
                epoch: int, logits: torch.Tensor, state: EpochState) -> torch.Tensor | None:
        if self.cfg.pseudo == "none":
            return None
        sims = None
        if self.pseudo_info.uses_sims:
            sims = self.online_sims(batch, epoch) if self.online_sims else batch.get("sims")
        if sims is not None:  # a row with any NaN view gets no pseudo-labels: counted, never silent
            nan = torch.isnan(sims.float()).flatten(2).any(dim=2)
            self.counts["sims_nan_rows"] += int(nan.any(dim=1).sum())
            self.counts["sims_nan_views"] += int(nan.sum())
        extra = {"logits": logits.detach().float().cpu(), "epoch": state} if self.pseudo_info.needs_logits else {}
        pseudo = self.pseudo_info.fn(sims=sims, observed=observed, cfg=self.pseudo_cfg, generator=gen, **extra)
        rows = batch["row"] - self.train_start
        if self.cfg.pseudo_mode == "accumulated":
            self.accumulated.update(rows.numpy(), pseudo.numpy())
            union = self.accumulated.get(rows.numpy()) != 0
            pseudo = torch.where(union & (pseudo == 0), torch.ones_like(pseudo), pseudo)
        return pseudo

    def train_epoch(self, model: Classifier, opt: torch.optim.Optimizer, epoch: int,
                    quality: PseudoLabelQuality) -> float:
        model.train()
        loader = train_loader(
            self.ds, self.observed, self.stream, epoch=epoch - 1, seed=self.cfg.seed,
            store_path=self.store.path if self.store and not self.online_sims else None,
            store_seed_index=self.store_seed_index(epoch),
            rank=self.rank, world=self.world,
        )
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        state = EpochState(epoch=epoch, num_epochs=self.cfg.epochs)
        # the loss is summed on the device: reading it every step would make the host wait for each step's end
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        self.counts = {"undecodable_images": 0, "sims_nan_rows": 0, "sims_nan_views": 0}
        n_batches = len(loader) if not self.cfg.max_batches else min(len(loader), self.cfg.max_batches)
        for i, batch in enumerate(loader):
            if i == n_batches:
                break
            rows = batch["row"] - self.train_start
            observed = self.labels.observed_for(rows, batch["observed"].long())
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                images = model_input(batch, self.device, self.stream.mean, self.stream.std)
                head_out: HeadOutput = model(images, train_outputs=True)
            logits = head_out.logits
            pseudo = self._pseudo(batch, observed, gen, epoch, logits, state)
            if pseudo is not None and not self.unknown_train:
                quality.update(rows.numpy(), pseudo.numpy(), batch["full"].numpy(), observed.numpy())
            extra = {"state": self.labels.batch_state(rows, self.device)} if self.loss_info.label_states else {}
            if self.loss_info.head_outputs:
                extra["head"] = {name: head_out.aux[name].float() for name in self.loss_info.head_outputs}
            out = self.loss_info.fn(
                logits=logits.float(), observed=to_device(observed, self.device),
                pseudo=None if pseudo is None else to_device(pseudo.long(), self.device), epoch=state,
                cfg=self.loss_cfg,
                **extra,
            )
            # a head's own regulariser (MIME's KL) joins whatever loss the method trains with
            total_loss = out.total if head_out.regulariser is None else out.total + head_out.regulariser.float()
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            if self.world > 1:
                # per-row label parameters (ROLE's estimator) are outside DDP: each rank holds the gradient of
                # its own rows only and rows are disjoint across ranks, so the sum is every row's gradient
                for param in self.state_params:
                    if param.grad is not None:
                        torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
            opt.step()
            self.labels.after_step(rows=rows, logits=logits.detach().float(), observed=observed, out=out, epoch=state)
            total += total_loss.detach().double() * len(observed)
            seen += len(observed)
            self.progress(f"epoch {epoch}/{self.cfg.epochs}", i + 1, n_batches)
        # every rank's cells and images count once: sums over ranks, not rank 0's or a mean of per-rank means
        total, seen, undecodable = sum_over_ranks(
            torch.tensor([total.item(), seen, loader.undecodable], dtype=torch.float64)).tolist()
        self.counts["undecodable_images"] = int(undecodable)
        return total / max(seen, 1)

    # ------------------------------------------------------------------ run
    def run(self) -> run_schema.RunSummary:
        cfg = self.cfg
        config_record = self.record()
        if run_record.check_folder(self.out, config_record):
            log.info("%s: finished earlier; reporting its summary", self.out)
            return run_schema.read_summary(self.out)
        seed_everything(cfg.seed)
        parts = build_parts(cfg, self.ds.meta.num_classes, self.device, self.labels, self.world)
        model, opt = parts.model, parts.optimizer
        self.state_params = parts.state_params
        stateful = {"model": model, "optimizer": opt, "accumulated": self.accumulated, "label_state": self.labels,
                    "quality": self.quality}
        if self.rank == 0:  # written once the model is built: a bad backbone, head or weights file leaves no folder
            run_record.write_record(self.out, config_record)
        self.loggers = Loggers(cfg.loggers, self.out, self.out.name, active=self.rank == 0)
        self.record_values = config_record
        history: dict[str, Any] = {"val_map": [], "best_epoch": 0, "stopped": False}
        start_epoch = 1
        resumed = load_last(self.out, cfg, stateful, self.ds.meta.fingerprint)
        if resumed is not None:
            start_epoch, history = resumed[0] + 1, resumed[1]
            log.info("resuming %s from epoch %d", self.out, start_epoch)
        elif self.rank == 0:
            (self.out / run_schema.METRICS_JSONL).write_text("")
        train_forward = parts.forward
        for epoch in range(start_epoch, cfg.epochs + 1):
            if history["stopped"]:
                break
            t0 = time.time()
            self.quality.reset()
            self.labels.begin_epoch()
            loss = self.train_epoch(train_forward, opt, epoch, self.quality)
            share_buffers_(model)  # the model every rank predicts with below is the one rank 0 saves
            self.labels.synchronise()
            self.quality.synchronise()
            self.accumulated.synchronise()
            epoch_state = EpochState(epoch=epoch, num_epochs=cfg.epochs)
            train_rows = train_probs = None
            if self.labels.wants_train_predictions(epoch_state):
                train_rows, train_probs, _ = predict(model, self.ds, "train", self.stream, self.device, self.amp,
                                                     rank=self.rank, world=self.world)
                train_rows = train_rows - self.train_start
            state_record = self.labels.end_epoch(epoch=epoch_state, rows=train_rows, probs=train_probs)
            val = None
            if self.has_val:
                skipped: dict[str, int] = {}
                _, probs, full = predict(model, self.ds, "val", self.stream, self.device, self.amp, skipped,
                                         rank=self.rank, world=self.world)
                val = {**split_metrics(probs, full, cfg.threshold), "skipped_images": float(skipped["val"])}
                history["val_map"].append(val["map"])
            if self.rank == 0:
                record = {"epoch": epoch, "split": "train", "loss": loss, "seconds": time.time() - t0, **self.counts}
                if cfg.pseudo != "none" and not self.unknown_train:
                    record.update({f"pseudo_{k}": float(v) for k, v in self.quality.compute().items()})
                record.update({f"state_{k}": float(v) for k, v in state_record.items()})
                lines = [record] + ([{"epoch": epoch, "split": "val", **val}] if val is not None else [])
                for line in lines:
                    run_schema.append_metrics(self.out, line)
                    self.loggers.log_epoch(line)
                if val is None or val["map"] >= max(history["val_map"]):  # no val split: the last epoch
                    history["best_epoch"] = epoch
                    save_best(self.out, model, self.model_meta())
            if val is not None and val["map"] >= max(history["val_map"]):
                history["best_val"] = val  # the saved weights' val metrics: the summary reports them as measured
            history["stopped"] = should_stop(cfg.early_stop, history["val_map"])
            history["epochs_run"] = epoch
            if self.rank == 0:
                save_last(self.out, training_state(cfg, epoch, history, stateful, self.ds.meta.fingerprint))
            log.info("epoch %d: loss %.4f, val mAP %s", epoch, loss, f"{val['map']:.2f}" if val else "-")
        if self.world > 1:
            torch.distributed.barrier()  # rank 0 has written best.safetensors
        return self.finish(model, history, parts.weights)

    def notes(self) -> list[str]:
        """What this run could not do as usual on its dataset, in words (the summary's `notes`)."""
        notes = []
        if not self.has_val:
            notes.append(f"model selection: dataset {self.ds.meta.name!r} has no val split "
                         f"({self.ds.meta.source.get('val', 'none')}); the last epoch is kept")
        if self.unknown_train and self.cfg.pseudo != "none":
            notes.append(f"pseudo-label quality: not measured, the train split has {self.unknown_train}")
        return notes

    def finish(self, model: Classifier, history: dict[str, Any], weights: str) -> run_schema.RunSummary:
        load_best(self.out, model)
        val = None
        skipped: dict[str, int] = {}  # per split, images that did not decode (metrics are over the others)
        if self.has_val and "best_val" in history:  # measured when the best weights were saved: not predicted again
            val = dict(history["best_val"])
            skipped["val"] = int(val["skipped_images"])
        elif self.has_val:  # a training state written before the history kept them
            _, vp, vf = predict(model, self.ds, "val", self.stream, self.device, self.amp, skipped,
                                rank=self.rank, world=self.world)
            val = {**split_metrics(vp, vf, self.cfg.threshold), "skipped_images": float(skipped["val"])}
        test = None
        if self.ds.meta.splits.get("test", 0):
            tr, tp, tf = predict(model, self.ds, "test", self.stream, self.device, self.amp, skipped,
                                 rank=self.rank, world=self.world)
            test = {**split_metrics(tp, tf, self.cfg.threshold), "skipped_images": float(skipped["test"])}
            if self.rank == 0:
                run_schema.append_metrics(self.out, {"epoch": history["best_epoch"], "split": "test", **test})
                run_schema.write_predictions(self.out, "test", tr, tp, tf)
        quality = {}
        records = run_schema.read_metrics(self.out)
        skipped["train"] = max((int(r.get("undecodable_images", 0)) for r in records if r["split"] == "train"),
                               default=0)
        for rec in records:
            if rec["split"] == "train" and rec["epoch"] == history["best_epoch"]:
                quality = {k[len("pseudo_"):]: v for k, v in rec.items() if k.startswith("pseudo_")}
        summary = run_schema.RunSummary(
            method=self.cfg.method, dataset=self.ds.meta.name, regime=self.cfg.regime, seed=self.cfg.seed,
            best_epoch=int(history["best_epoch"]), val=_split_metrics(val) if val else None,
            test=_split_metrics(test) if test else None,
            epochs_run=int(history.get("epochs_run", len(history["val_map"]))), pseudo_quality=quality,
            notes=self.notes(), skipped_images=skipped,
        )
        if self.rank == 0:
            run_schema.write_summary(self.out, summary)
            hparams = {k: v for k, v in run_record.flatten(self.record_values).items()
                       if isinstance(v, int | float | str | bool) and not k.startswith(run_record.DESCRIPTIVE)}
            self.loggers.finish(hparams, {f"{split}_{k}": v for split, m in (("val", val or {}), ("test", test or {}))
                                          for k, v in m.items()})
        return summary
