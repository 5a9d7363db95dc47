"""Where a teacher's weights come from: open_clip tags in the local caches, model folders, weights files.

Everything resolves to a local file before a model is built (`WeightsSource`), so that offline with nothing
cached the command fails before any work, naming the files it looked for and how to get them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpl.schemas.errors import InputError
from mlpl.stages.hub import hf_endpoint, may_download, open_clip_tag_candidates, open_clip_tag_hint, sha256_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_FOLDER_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)



@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from, resolved to something `open_clip.create_model` loads locally.

    Attributes:
        kind: 'tag', 'file', 'folder', 'builtin' or 'random'.
        model_name: what is passed to `open_clip.create_model` (a config name or `local-dir:PATH`).
        checkpoint: local weights file passed as `pretrained=` (None for folders and random weights).
        record: what the store records about the weights (tag, file name, sha256, ...; no paths).
        force_quick_gelu: the tag's weights were trained with QuickGELU and the config lacks it.
    """

    kind: str
    model_name: str
    checkpoint: str | None
    record: dict[str, Any]
    force_quick_gelu: bool = False


def _folder_weights(folder: Path) -> Path | None:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for suffix in (".safetensors", ".bin", ".pth", ".pt") for p in folder.glob(f"*{suffix}"))
    return found[0] if found else None


def resolve_folder(folder: Path, option: str) -> WeightsSource:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise InputError(
            f"{option} {folder}: no {config.name} in this folder; expected an open_clip model folder "
            "(open_clip_config.json with 'model_cfg', plus a weights file such as open_clip_model.safetensors)"
        )
    weights = _folder_weights(folder)
    if weights is None:
        raise InputError(
            f"{option} {folder}: no weights file in this folder; expected one of {list(_FOLDER_WEIGHTS)}"
        )
    record = {"kind": "folder", "file": weights.name, "sha256": sha256_file(weights),
              "config_sha256": sha256_file(config)}
    return WeightsSource("folder", f"local-dir:{folder.resolve()}", None, record)


def resolve_tag(model: str, tag: str, cache_dir: str | None) -> WeightsSource:
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    pcfg = get_pretrained_cfg(model, tag)
    record = {"kind": "tag", "tag": tag, "source": pcfg.get("hf_hub") or pcfg.get("url") or pcfg.get("file", "")}
    model_cfg = open_clip.get_model_config(model) or {}
    quick = bool(pcfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)
    if quick:
        log.info("--pretrained %s was trained with QuickGELU: building %s with force_quick_gelu", tag, model)
    for key in ("mean", "std", "interpolation"):
        if key in pcfg:
            record[key] = list(pcfg[key]) if isinstance(pcfg[key], tuple) else pcfg[key]
    candidates = open_clip_tag_candidates(pcfg, cache_dir)
    for _, path in candidates:
        if path:
            return WeightsSource("tag", model, path, record, quick)
    looked = "; ".join(desc for desc, _ in candidates) or "(the tag names no file)"
    how = f"{open_clip_tag_hint(model, tag, pcfg)}, or pass --pretrained PATH to a local weights file or model folder"
    source = hf_endpoint() if pcfg.get("hf_hub") else pcfg.get("url", "")
    if not source or not may_download(source):
        # decided once: no minute of library retries, one message
        raise InputError(
            f"--pretrained {tag}: weights of {model} are not in the cache and no download is possible (offline: "
            f"HF_HUB_OFFLINE/MLPL_OFFLINE set, or the host does not answer); looked for {looked}. To get them, {how}")
    log.info("downloading %s weights %r (%s)", model, tag, record["source"])
    try:
        with quiet_open_clip():
            path = download_pretrained(pcfg, cache_dir=cache_dir)
    except Exception as e:  # network errors come in many types
        raise InputError(
            f"--pretrained {tag}: weights of {model} are not cached and the download failed "
            f"({e.__class__.__name__}: {e}); looked for {looked}. To get them, {how} "
            "(HF_HUB_OFFLINE=1 skips the download attempt)"
        ) from None
    if not path or not os.path.isfile(path):
        raise InputError(f"--pretrained {tag}: open_clip returned no weights file for {model}; looked for {looked}")
    return WeightsSource("tag", model, path, record, quick)




@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """open_clip logs every loading step at INFO on the root logger; keep its warnings only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)



def list_teacher_weights(pattern: str = "*", cache_dir: str | None = None) -> list[tuple[str, str, str | None]]:
    """(model, tag or '', cached file or None) for every open_clip model/tag matching `pattern`, then every
    `hf-hub:` repository in the Hugging Face cache that holds an open_clip model (looks at local files only)."""
    import fnmatch

    import open_clip
    from mlpl.stages.hub import OPEN_CLIP_HUB_CONFIG, open_clip_tag_cached

    rows: list[tuple[str, str, str | None]] = []
    tagged = set()
    for model, tag in open_clip.list_pretrained():
        if fnmatch.fnmatch(model, pattern):
            rows.append((model, tag, open_clip_tag_cached(model, tag, cache_dir)))
            tagged.add(model)
    rows += [(model, "", None) for model in open_clip.list_models() if model not in tagged
             and fnmatch.fnmatch(model, pattern)]
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir(cache_dir).repos
    except Exception:  # no cache folder yet, or one the scanner cannot read: nothing cached to list
        repos = frozenset()
    for repo in sorted(repos, key=lambda r: r.repo_id):
        name = f"hf-hub:{repo.repo_id}"
        files = {f.file_name: f.file_path for rev in repo.revisions for f in rev.files}
        if OPEN_CLIP_HUB_CONFIG in files and fnmatch.fnmatch(name, pattern):
            rows.append((name, "", str(files[OPEN_CLIP_HUB_CONFIG].parent)))
    return rows
