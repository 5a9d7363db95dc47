"""Stage one's output: creating or resuming the store, writing one task's whole chunk, listing corrupt rows.

A chunk is marked done only after it is fully written, so a killed run resumes and ends byte-identical
to an uninterrupted one. A resumed run must have been started with the same settings (store attributes)
and the same teacher (text embeddings within `TEXT_EMB_TOLERANCE`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from mlpl.schemas.errors import InputError, naming_path
from mlpl.schemas.store import Store, StoreAttrs, create_store, open_store
from mlpl.schemas.tempdirs import make_temp_beside
from mlpl.stages.precompute.tasks import Task

# a resumed run uses the store's text embeddings; recomputed ones may differ by rounding on other hardware,
# anything larger means another teacher
TEXT_EMB_TOLERANCE = 1e-4


def _normalised_json(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: store has {json.dumps(a)[:80]}, this run {json.dumps(b)[:80]}")
    return out


def open_or_create_store(out: Path, attrs: StoreAttrs, text_emb: np.ndarray) -> Store:
    """Create the store, or open an existing one after checking it was built with the same settings."""
    if not (out / "zarr.json").exists():
        if out.exists() and any(out.iterdir()):
            raise InputError(f"--out {out}: exists and is not a pseudo-label store; choose another --out")
        if out.exists():
            out.rmdir()
        # built beside `out` and renamed, so that a run killed while creating leaves no half store (and the
        # next run removes the temporary folder it left)
        tmp = make_temp_beside(out)
        try:
            tmp.rmdir()
            create_store(tmp, attrs, text_emb)
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if (out / "zarr.json").exists():  # another run created it between our check and our rename
                raise InputError(f"--out {out}: another `mlpl precompute-clip` created this store at the same "
                                 "time; rerun this command once it has finished (it resumes what is left)") from None
            raise e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return open_store(out, mode="r+")
    store = open_store(out, mode="r+")
    diffs = _differences(_normalised_json(store.attrs.to_dict()), _normalised_json(attrs.to_dict()))
    if diffs:
        raise InputError(
            f"--out {out}: an existing store built with other settings ({'; '.join(diffs[:6])}); "
            "pass the same options to resume it, or choose another --out"
        )
    gap = float(np.abs(store.text_emb() - text_emb.astype(np.float32)).max())
    if gap > TEXT_EMB_TOLERANCE:
        raise InputError(
            f"--out {out}: the class text embeddings differ from the ones in the store by up to {gap:.2g} "
            "(other teacher weights or library versions); choose another --out"
        )
    return store


def scan_corrupt_rows(store: Store) -> list[int]:
    """Rows whose similarities are all NaN in a written chunk (one done seed per chunk is enough)."""
    done = store.done_matrix()
    rows: list[int] = []
    for chunk in range(done.shape[1]):
        seeds = np.flatnonzero(done[:, chunk])
        if len(seeds):
            sims = store.read_chunk(int(seeds[0]), chunk)
            bad = np.isnan(sims.astype(np.float32)).reshape(len(sims), -1).all(axis=1)
            rows += (store.chunk_rows(chunk)[0] + np.flatnonzero(bad)).tolist()
    return rows


def write_task(store: Store, task: Task, sims: np.ndarray, emb: np.ndarray | None) -> None:
    stop = task.first_row + task.num_rows
    with naming_path(store.path):
        store.sims[task.seed_index, task.first_row : stop] = sims
        if emb is not None:
            store.group["img_emb"][task.seed_index, task.first_row : stop] = emb
        store.record_checksum(task.seed_index, task.chunk)
        store.done[task.seed_index, task.chunk] = 1  # last: a chunk is done only once it is fully written
