"""Downloadable weights, offline-first: the local caches they land in (Hugging Face hub, torch hub, open_clip's URL
cache) and the single decision, made once per process, whether a download may be tried at all.

Everything that loads published weights (stage one's teachers, stage two's backbones) looks in the cache first and
asks the network at most once: `HF_HUB_OFFLINE`/`MLPL_OFFLINE` switch downloads off, and otherwise one probe with a
short deadline decides whether the host answers. A missing file then fails at once with one message naming the files
looked for and how to get them, instead of a library's minute of retries and repeated warnings.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
"""Deadline of the one reachability probe per host (DNS included); the offline error must come within 5 s."""

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "MLPL_OFFLINE")
HF_ENDPOINT = "https://huggingface.co"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The checksum a run or store records for a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def is_offline() -> bool:
    """True when downloads are switched off (HF_HUB_OFFLINE or MLPL_OFFLINE set to 1/true/yes/on)."""
    flags = (os.environ.get(k, "").strip().lower() for k in OFFLINE_FLAGS)
    return any(v in ("1", "true", "yes", "on") for v in flags)


@functools.cache
def _host_answers(origin: str) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(origin, method="HEAD"), timeout=PROBE_SECONDS)
            result.append(True)
        except urllib.error.HTTPError:  # the host answered, if only with an error status
            result.append(True)
        except Exception:  # DNS, refused, timeout, proxy: all mean "not reachable now"
            result.append(False)

    # a daemon thread bounds the whole probe, name resolution included (urlopen's timeout does not cover DNS)
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(PROBE_SECONDS)
    reachable = bool(result and result[0])
    if not reachable:
        log.warning("%s does not answer (asked once, for at most %.0f s): no downloads in this run", origin,
                    PROBE_SECONDS)
    return reachable


def may_download(url: str) -> bool:
    """Whether a download from `url` may be tried: not switched off, and its host answered one probe (once per
    host and process, so a missing network is found once, warned about once, and never retried)."""
    if is_offline():
        return False
    parts = urllib.parse.urlsplit(url)
    return _host_answers(f"{parts.scheme}://{parts.netloc}/")


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")


def hf_cached_file(repo: str, filename: str, cache_dir: str | None = None) -> str | None:
    """The local path of `repo/filename` in the Hugging Face cache, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo_id=repo, filename=filename, cache_dir=cache_dir)
    return got if isinstance(got, str) and os.path.isfile(got) else None


def hf_download(repo: str, filename: str, cache_dir: str | None = None) -> str:
    """Download `repo/filename` into the Hugging Face cache (call only after `may_download`)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir)


def torch_hub_file(url: str) -> Path:
    """Where torch's hub (torchvision, timm's URL weights) caches the file of `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)


def hf_download_hint(repo: str, files: list[str]) -> str:
    return f"`huggingface-cli download {repo} {' '.join(files)}` (fills the Hugging Face cache)"


# ------------------------------------------------------------------------------------------ open_clip tags

def open_clip_hub_file(hub: str) -> tuple[str, str]:
    """open_clip's reading of an `hf_hub` entry: 'org/repo/' (default file) or 'org/repo/file'."""
    from open_clip.constants import HF_WEIGHTS_NAME

    repo, filename = os.path.split(hub)
    return repo, filename or HF_WEIGHTS_NAME


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors files open_clip tries before `filename` (as `pretrained._get_safe_alternatives`)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def open_clip_tag_candidates(pcfg: dict[str, Any], cache_dir: str | None) -> list[tuple[str, str | None]]:
    """(description, cached path or None) for every place open_clip would read a tag's weights from."""
    out: list[tuple[str, str | None]] = []
    if pcfg.get("file"):
        out.append((pcfg["file"], pcfg["file"] if os.path.isfile(pcfg["file"]) else None))
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo, filename = open_clip_hub_file(hub)
        for name in _safe_alternatives(filename) + [filename]:
            out.append((f"hf-hub {repo}/{name}", hf_cached_file(repo, name, cache_dir)))
    url = pcfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        out.append((target, target if os.path.isfile(target) else None))
    return out


def open_clip_tag_hint(model: str, tag: str, pcfg: dict[str, Any]) -> str:
    """How to fill the cache with a tag's weights on a machine with network."""
    steps = []
    if pcfg.get("hf_hub"):
        repo, filename = open_clip_hub_file(pcfg["hf_hub"])
        steps.append(hf_download_hint(repo, [filename]))
    if pcfg.get("url"):
        steps.append(f"download {pcfg['url']} into ~/.cache/clip/")
    steps.append(f"`python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\"`")
    return "on a machine with network run " + " or ".join(steps)


def open_clip_tag_cached(model: str, tag: str, cache_dir: str | None = None) -> str | None:
    """The cached weights file of open_clip's `model`/`tag`, or None."""
    from open_clip.pretrained import get_pretrained_cfg

    for _, path in open_clip_tag_candidates(get_pretrained_cfg(model, tag), cache_dir):
        if path:
            return path
    return None


# ------------------------------------------------------------------------------------ open_clip hf-hub repos

OPEN_CLIP_HUB_CONFIG = "open_clip_config.json"
OPEN_CLIP_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def open_clip_hub_folder(repo: str, option: str, cache_dir: str | None = None) -> Path:
    """The local folder (a Hugging Face cache snapshot) holding `hf-hub:repo`'s config and weights.

    Looks in the cache first; downloads only when `may_download` allows it; otherwise fails at once naming the
    files looked for and how to get them.

    Raises:
        InputError: not cached and no download possible (or the download failed).
    """
    from mlpl.schemas.errors import InputError

    config = hf_cached_file(repo, OPEN_CLIP_HUB_CONFIG, cache_dir)
    weights = next((p for name in OPEN_CLIP_HUB_WEIGHTS if (p := hf_cached_file(repo, name, cache_dir))), None)
    if config and weights and Path(config).parent == Path(weights).parent:
        return Path(config).parent
    wanted = [OPEN_CLIP_HUB_CONFIG, OPEN_CLIP_HUB_WEIGHTS[0]]
    looked = ", ".join(f"{repo}/{name}" for name in (OPEN_CLIP_HUB_CONFIG, *OPEN_CLIP_HUB_WEIGHTS))
    how = (f"on a machine with network run {hf_download_hint(repo, wanted)}, or download the repository's files "
           f"into a folder and pass local-dir:FOLDER")
    if not may_download(hf_endpoint()):
        raise InputError(f"{option} hf-hub:{repo}: not in the Hugging Face cache "
                         f"({os.environ.get('HF_HUB_CACHE') or 'its default place'}) and no download is possible "
                         f"(offline: HF_HUB_OFFLINE/MLPL_OFFLINE set, or {hf_endpoint()} unreachable); looked for "
                         f"{looked}. To get them, {how}")
    try:
        config = hf_download(repo, OPEN_CLIP_HUB_CONFIG, cache_dir)
        for name in OPEN_CLIP_HUB_WEIGHTS:
            try:
                weights = hf_download(repo, name, cache_dir)
                break
            except Exception:  # the repository has the other file name
                weights = None
    except Exception as e:  # network and repository errors come in many types
        raise InputError(f"{option} hf-hub:{repo}: download failed ({e.__class__.__name__}: {e}); looked for "
                         f"{looked}. To get them, {how}") from None
    if not weights:
        raise InputError(f"{option} hf-hub:{repo}: the repository has none of {list(OPEN_CLIP_HUB_WEIGHTS)}")
    return Path(config).parent
