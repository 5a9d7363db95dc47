"""Stage-one teachers: any open_clip model by name, or the built-in digits teacher, with class prompts
(docs/methods.md §4).

Weights come from `--pretrained`: an open_clip tag (read from open_clip's own cache: the Hugging Face
hub cache, or `~/.cache/clip` for URL-only tags), a local weights file, or a local open_clip model
folder (`open_clip_config.json` + weights); `--model hf-hub:ORG/NAME` is a Hugging Face repository
holding both (read from the Hugging Face cache and passed to open_clip unchanged as a model folder);
`random` builds randomly initialised weights (seeded; for timing only). Everything is resolved to a
local file *before* a model is built, so that offline with nothing cached the command fails before
any work, naming the file it looked for and how to get it; whether a download may be tried at all is
decided once (`mlpl.stages.hub`), so a missing network costs seconds, not a minute of retries.
Tags that were trained with QuickGELU (e.g. `ViT-B-16` + `openai`) get `force_quick_gelu`.

The model is always built by `open_clip.create_model` (a built-in or registered config name with
`pretrained=<file>`, or `local-dir:<folder>`), so the digits teacher, a ViT-B-16 weights file and a
model folder share one loading path.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlpl.schemas.errors import InputError
from mlpl.stages.hub import (
    open_clip_hub_folder,
    sha256_file,
)
from mlpl.stages.precompute.teacher_weights import (  # noqa: F401  (re-exported)
    WEIGHT_SUFFIXES,
    WeightsSource,
    list_teacher_weights,
    quiet_open_clip,
    resolve_folder,
    resolve_tag,
)
from mlpl.stages.precompute.text_noise import TextNoiseCfg, apply_text_noise
from mlpl.stages.registry import Registry
from mlpl.stages.runtime import pick_device

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "a photo of a {name}."
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_TAG = "openai"
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

@dataclass(frozen=True)
class TeacherInfo:
    """A built-in teacher (one that mlpl can build itself, offline).

    Attributes:
        name: what `--model` names.
        description: one line.
        reference: where the recipe is described.
        prompt_template: its default prompt template.
        datasets: prepared datasets (by name) for which it is the default teacher.
    """

    name: str
    description: str
    reference: str
    prompt_template: str
    datasets: tuple[str, ...] = ()


TEACHERS: Registry[TeacherInfo] = Registry("teacher")
TEACHERS.register(
    TeacherInfo(
        name="digits",
        description="tiny open_clip CLIP (ModifiedResNet 32 px + 2-layer text) trained on the digits teacher pool",
        reference="docs/architecture.md, 'The built-in digits world'; stages/precompute/digits_teacher.py",
        prompt_template="a photo of the digit {name}.",
        datasets=("digits",),
    )
)


def default_teacher_for(dataset_name: str) -> str:
    """The teacher `precompute-clip` uses when no `--model` is given."""
    for info in TEACHERS:
        if dataset_name in info.datasets:
            return info.name
    return DEFAULT_MODEL


def default_prompt_template(model: str) -> str:
    return TEACHERS.get(model).prompt_template if model in TEACHERS else PROMPT_TEMPLATE


def make_prompts(classes: tuple[str, ...] | list[str], template: str) -> list[str]:
    """One prompt per class; underscores in class names become spaces (docs/methods.md §4)."""
    try:
        return [template.format(name=name.replace("_", " ")) for name in classes]
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(
            f"--prompt-template {template!r} is not a valid template ({e}); expected text with one '{{name}}'"
        ) from None


@dataclass(frozen=True)
class TeacherCfg:
    """Which teacher, which weights, how its text side is built; resolved once at the CLI boundary.

    Attributes:
        model: an open_clip model name (built-in or registered config), `local-dir:PATH`, or a built-in
            teacher name (`digits`).
        pretrained: open_clip tag, weights file, model folder, or `random`; None: the model's default.
        prompt_template: per-class prompt with `{name}`; None: the teacher's default.
        noise: text-embedding noise G(·) (docs/methods.md §4.2), or None.
        precision: 'auto' (bf16 or fp16 autocast on GPU, fp32 on CPU), 'fp32', 'bf16', 'fp16'.
        device: torch device; None: cuda if available, else cpu.
        cache_dir: open_clip/Hugging Face download cache (None: their defaults).
        digits_cache: folder for the built-in digits teacher (None: `$MLPL_CACHE` or ~/.cache/mlpl).
    """

    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    prompt_template: str | None = None
    noise: TextNoiseCfg | None = None
    precision: str = "auto"
    device: str | None = None
    cache_dir: str | None = None
    digits_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {self.precision!r}")


def resolve_weights(cfg: TeacherCfg) -> WeightsSource:
    """Resolve `--model`/`--pretrained` to local files, without building a model.

    Raises:
        InputError: an unknown model or tag, a missing file or folder, or (offline) weights that are
            not cached: the message names what was looked for and how to get it.
    """
    import open_clip

    model, pretrained = cfg.model, cfg.pretrained
    if model in TEACHERS:
        if pretrained not in (None, "builtin"):
            raise InputError(f"--pretrained {pretrained!r}: the built-in teacher {model!r} takes no --pretrained")
        from mlpl.stages.precompute import digits_teacher

        root = Path(cfg.digits_cache) if cfg.digits_cache else None
        folder = digits_teacher.ensure_digits_teacher(root)
        src = resolve_folder(folder, "--model digits")
        return WeightsSource("builtin", src.model_name, None, {**src.record, "kind": "builtin", "name": model})
    if pretrained and pretrained.startswith("hf-hub:"):
        raise InputError(f"--pretrained {pretrained}: a Hugging Face repository holds a model's config and weights "
                         f"together; pass it as --model {pretrained} (without --pretrained)")
    if model.startswith("hf-hub:"):
        if pretrained is not None:
            raise InputError(f"--pretrained {pretrained!r}: --model {model} brings its own weights; drop --pretrained")
        repo = model.removeprefix("hf-hub:")
        src = resolve_folder(open_clip_hub_folder(repo, "--model", cfg.cache_dir), "--model")
        return WeightsSource("folder", src.model_name, None, {**src.record, "kind": "hf-hub", "repo": repo})
    if model.startswith("local-dir:") or (os.sep in model and Path(model).exists()):
        folder = Path(model.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise InputError(f"--model {model}: no such folder; expected an open_clip model folder")
        return resolve_folder(folder, "--model")
    if pretrained and Path(pretrained).is_dir():
        src = resolve_folder(Path(pretrained), "--pretrained")
        cfg_name = open_clip.get_model_config(model.replace("/", "-"))
        if cfg_name is not None:
            log.info("--pretrained is a model folder: its own config is used (not the %s config)", model)
        return src
    name = model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        import difflib

        known = open_clip.list_models()
        close = difflib.get_close_matches(name, known + list(TEACHERS.names()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"--model {model!r}: not an open_clip model config nor a built-in teacher. "
            f"Built-in teachers: {TEACHERS.names()}; open_clip models: {known}{hint}"
        )
    if pretrained is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise InputError(
                f"--pretrained is required for {name!r} (open_clip has no tag for it): give a weights file, "
                f"an open_clip model folder, or {RANDOM_WEIGHTS!r}"
            )
        pretrained = DEFAULT_TAG if DEFAULT_TAG in tags else tags[0]
    if pretrained == RANDOM_WEIGHTS:
        return WeightsSource("random", name, None, {"kind": "random", "torch_seed": RANDOM_SEED})
    if Path(pretrained).is_file():
        return WeightsSource("file", name, str(pretrained),
                             {"kind": "file", "file": Path(pretrained).name, "sha256": sha256_file(pretrained)})
    if open_clip.get_pretrained_cfg(name, pretrained):
        return resolve_tag(name, pretrained, cfg.cache_dir)
    if os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES):
        raise InputError(f"--pretrained {pretrained}: no such file or folder; expected a weights file, "
                         "an open_clip model folder, or an open_clip tag")
    raise InputError(
        f"--pretrained {pretrained!r}: not a tag of {name} nor an existing file or folder. "
        f"Tags of {name}: {open_clip.list_pretrained_tags_by_model(name)}; or {RANDOM_WEIGHTS!r}"
    )



def pick_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 (fp16 where bf16 is unsupported) on GPU, fp32 on CPU; half precision needs a GPU."""
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            raise InputError(f"--precision {precision}: half-precision autocast needs a GPU; use fp32 on {device}")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


@dataclass
class Teacher:
    """A loaded teacher in eval mode. Features are L2-normalised float32.

    Attributes:
        model: the open_clip model.
        tokenizer: its tokenizer.
        device: where it runs.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; weights stay fp32).
        image_size: the input side the vision tower expects.
        interpolation: the resampling filter its preprocessing uses.
        description: what the store records (architecture, config, weights, precision; no paths).
        mean: per-channel mean its weights were trained with (empty if unknown).
        std: per-channel std its weights were trained with (empty if unknown).
    """

    model: Any
    tokenizer: Any
    device: torch.device
    precision: str
    image_size: int
    interpolation: str
    description: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def embed_dim(self) -> int:
        return int(self.description["embed_dim"])

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings [len(prompts), D], float32, on the teacher's device."""
        tokens = self.tokenizer(prompts).to(self.device)
        with self._autocast():
            feats = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings [n, D], float32, for normalised images [n, 3, S, S]."""
        with self._autocast():
            feats = self.model.encode_image(images.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def load_teacher(cfg: TeacherCfg, source: WeightsSource | None = None) -> Teacher:
    """Build the teacher with `open_clip.create_model` from resolved local weights (`resolve_weights`)."""
    import open_clip

    source = source or resolve_weights(cfg)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    if source.kind == "random":
        log.warning("teacher %s with random weights (seed %d): for timing only", source.model_name, RANDOM_SEED)
        torch.manual_seed(RANDOM_SEED)
    try:
        with quiet_open_clip():
            model = open_clip.create_model(
                source.model_name, pretrained=source.checkpoint, force_quick_gelu=source.force_quick_gelu,
                device=device, cache_dir=cfg.cache_dir, pretrained_text=False,
            )
            tokenizer = open_clip.get_tokenizer(source.model_name)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError, EOFError, pickle.UnpicklingError) as e:
        # open_clip loads with weights_only: a file that needs pickle's code to load is refused, never run
        where = source.checkpoint or source.model_name
        raise InputError(f"--pretrained {where}: open_clip could not load these weights into "
                         f"{cfg.model!r} ({e.__class__.__name__}: {e})") from None
    model.eval()
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = preprocess.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    if source.model_name.startswith("local-dir:"):
        import json

        config = json.loads((Path(source.model_name.removeprefix("local-dir:")) / "open_clip_config.json").read_text())
        model_cfg = config.get("model_cfg", config)
    else:
        model_cfg = open_clip.get_model_config(source.model_name) or {}
    if source.force_quick_gelu:
        model_cfg = {**model_cfg, "quick_gelu": True}
    embed_dim = int(model_cfg.get("embed_dim") or model.text_projection.shape[1])
    # the statistics the weights were trained with: a tag's own (open_clip merges them only when it loads
    # the tag itself), else the model's preprocessing config
    trained_with = {key: source.record.get(key, preprocess.get(key)) for key in ("mean", "std", "interpolation")}
    description = {
        "model": cfg.model,
        "config": model_cfg,
        "weights": source.record,
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
        "precision": precision,
        "device_type": device.type,
        "embed_dim": embed_dim,
        "image_size": size,
        # the temperature the teacher was trained with (CDUL's softmax temperature, docs/methods.md §4.4)
        "logit_scale": float(model.logit_scale.detach().exp()),
        "open_clip": open_clip.__version__,
    }
    return Teacher(model, tokenizer, device, precision, size, str(trained_with["interpolation"] or "bicubic"),
                   description, tuple(trained_with["mean"] or ()), tuple(trained_with["std"] or ()))


def class_text_embeddings(
    teacher: Teacher, classes: tuple[str, ...], template: str, noise: TextNoiseCfg | None
) -> tuple[torch.Tensor, list[str]]:
    """Normalised class text embeddings [C, D] (float32, CPU), noised by G(·) if asked, and the prompts."""
    prompts = make_prompts(classes, template)
    # one thread: a CPU matrix product may split its sums differently with more threads, and the text
    # embeddings must not depend on the thread count (torchrun gives each rank one thread by default)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = teacher.encode_text(prompts).cpu()
        if noise is not None:
            emb = apply_text_noise(emb, noise)
    finally:
        torch.set_num_threads(threads)
    return emb, prompts
