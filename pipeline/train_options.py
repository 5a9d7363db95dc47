"""The options of `mlpl train` that configure a run, written once: `mlpl sweep` applies them to every run."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

# name → (annotation, default); every one maps onto a `TrainCfg` field of the same name (see `run_overrides`)
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "pseudo_store": (Annotated[Path | None, typer.Option(help="Store from `mlpl precompute-clip`.")], None),
    "preset": (Annotated[Path | None, typer.Option(help="A TOML file overriding the method's preset.")], None),
    "epochs": (Annotated[int | None, typer.Option(help="Training epochs.")], None),
    "batch_size": (Annotated[int | None, typer.Option(
        help="Batch size per process (under torchrun the global batch is this × processes).")], None),
    "lr": (Annotated[float | None, typer.Option(help="Backbone learning rate.")], None),
    "head_lr_mult": (Annotated[float | None, typer.Option(help="Head learning-rate multiplier.")], None),
    "backbone": (Annotated[str | None, typer.Option(
        help="Backbone: resnet50 (default), resnet18, small-cnn, timm:NAME (any timm model), open_clip:MODEL[@TAG] "
             "(a CLIP image tower); `mlpl backbones` lists them.")], None),
    "head": (Annotated[str | None, typer.Option(
        help="Classifier head: linear or boostlu (default: the method's); combines with any method.")], None),
    "backbone_weights": (Annotated[Path | None, typer.Option(
        help="Local backbone weights: .safetensors, .pth/.pt/.bin (tensors only, optionally wrapped as "
             "{'state_dict': ...} or {'model': ...}).")], None),
    "pretrained": (Annotated[bool | None, typer.Option(
        "--pretrained/--no-pretrained", help="The backbone library's own pretrained weights (from its local "
                                             "cache), or random initialisation.")], None),
    "image_size": (Annotated[int | None, typer.Option(help="Input side in pixels (default: the backbone's).")], None),
    "mean": (Annotated[str | None, typer.Option(
        help="Normalisation mean R,G,B of [0, 1] images (default: the backbone's).")], None),
    "std": (Annotated[str | None, typer.Option(help="Normalisation std R,G,B (default: the backbone's).")], None),
    "pseudo": (Annotated[str | None, typer.Option(help="Pseudo-labeller: damp, vlpl, random, none.")], None),
    "pseudo_mode": (Annotated[str | None, typer.Option(help="dynamic, fixed or accumulated.")], None),
    "workers": (Annotated[str | None, typer.Option(
        help="DataLoader workers: a count, or 'auto' (this process's cores minus one).")], None),
    "device": (Annotated[str | None, typer.Option(help="auto, cpu, cuda.")], None),
    "decode": (Annotated[str | None, typer.Option(
        help="Where JPEGs are decoded: workers (CPU, the default) or device (nvJPEG on the GPU; pixels within "
             "a few units of the workers').")], None),
    "max_batches": (Annotated[int | None, typer.Option(help="Stop each epoch after N batches (smoke runs).")], None),
    "logger": (Annotated[list[str] | None, typer.Option(
        help="Also log to: tensorboard, csv, wandb (repeatable; metrics.jsonl is always written).")], None),
    "set": (Annotated[list[str] | None, typer.Option(
        "--set", help="Override a resolved value: KEY=VALUE or section.key=VALUE, e.g. pseudo_params.tau=0.5 "
                      "(repeatable; typed; keys as in a run's config.toml).")], None),
    "data_root": (Annotated[Path | None, typer.Option(help="Where named datasets live.")], None),
    "online_teacher": (Annotated[bool, typer.Option(
        help="Run the store's teacher inside every step instead of reading the store (for comparison).")], False),
}
NOT_CFG_FIELDS = ("preset", "set", "data_root", "online_teacher", "logger")


def with_run_options(func: F) -> F:
    """Append `RUN_OPTIONS` to a command's signature (typer reads `__signature__`); they arrive as **options."""
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
             for name, (annotation, default) in RUN_OPTIONS.items() if name not in signature.parameters]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    func.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    return func


def run_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The `TrainCfg` overrides that `RUN_OPTIONS` values make (None: not given); paths as strings."""
    out = {}
    for name in RUN_OPTIONS:
        value = options.get(name)
        if name in NOT_CFG_FIELDS or value is None:
            continue
        # runs record absolute paths, so that a run folder means the same from any working directory
        out[name] = str(value.resolve()) if name == "pseudo_store" else str(value) if isinstance(value, Path) else value
    for name in ("mean", "std"):
        if options.get(name) is not None:
            from mlpl.stages.train.datacfg import parse_channels

            out[name] = parse_channels(options[name], f"--{name}")
    if options.get("workers") is not None:
        from mlpl.stages.runtime import workers_option

        out["workers"] = workers_option(options["workers"])
    if options.get("logger"):
        out["loggers"] = list(options["logger"])
    return out
