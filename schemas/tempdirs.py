"""Temporary folders built beside an output and renamed onto it: named after the process that writes them, so
that the next run removes what a killed run left (and never the folder of a run that is still going)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
_TEMP_NAME = re.compile(r"(?:(\d+)\.)?[a-z0-9_]{8}")


def _prefix(out: Path) -> str:
    return f".{out.name}."


def make_temp_beside(out: Path) -> Path:
    """A new empty folder `.<name>.<pid>.<random>` in `out`'s parent (made first), readable like any folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_prefix(out)}{os.getpid()}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove `out`'s temporary siblings whose writing process is gone (or that carry no process id: the
    form older versions wrote); return them."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.glob(f"{_prefix(out)}*"):
        found = _TEMP_NAME.fullmatch(path.name[len(_prefix(out)):])  # mkdtemp's 8 random characters
        if found is None or not path.is_dir():
            continue  # not a folder this module made: a user's own `.name.something` stays
        pid = found.group(1)
        if pid is None or (int(pid) != os.getpid() and not _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a run that was killed", path)
            removed.append(path)
    return removed
