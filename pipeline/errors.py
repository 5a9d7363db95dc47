"""How the command line reports failure: bad input exits 2, the environment (disk, permissions) exits 1.

Either way the user sees one line, `error: ...`, naming the file, row, option or path, never a traceback.
Errors raised in DataLoader worker processes reach the main process wrapped in the worker's traceback
text; only their own last line is shown. What a failed command wrote is left as it was: every writer
in the project writes atomically or resumably, so rerunning the same command continues from there.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpl.schemas.errors import InputError

log = logging.getLogger(__name__)

INPUT_EXIT = 2
ENVIRONMENT_EXIT = 1

_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EFBIG: "the file size limit of this process was reached (ulimit -f)",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "no permission; choose a folder you can write to or fix its permissions",
    errno.EPERM: "no permission; choose a folder you can write to or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is expected",
    errno.EISDIR: "a folder stands where a file is expected",
    errno.ENOENT: "it does not exist",
}


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (a worker's wrapped traceback reduced to the error's own line)."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name = error.__class__.__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(text.split())


def environment_message(error: OSError) -> str:
    """`path: what happened; what to do` for an operating-system error."""
    path = error.filename if error.filename is not None else None
    what = error.strerror or one_line(error) or error.__class__.__name__
    hint = _HINTS.get(error.errno or -1, "")
    where = f"{path}: " if path else ""
    also = f" (and {error.filename2})" if getattr(error, "filename2", None) else ""
    resume = "; what was written so far is kept: rerun the same command to continue"
    return f"{where}{what}{also}" + (f"; {hint}" if hint else "") + resume


@contextmanager
def reported_failures() -> Iterator[None]:
    """Turn `InputError` into exit code 2 and `OSError` into exit code 1, each as one `error: ...` line."""
    try:
        yield
    except InputError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(INPUT_EXIT) from None
    except OSError as e:
        log.debug("environment failure", exc_info=True)
        print(f"error: {environment_message(e)}", file=sys.stderr)
        raise SystemExit(ENVIRONMENT_EXIT) from None


def check_out_folder(path: Path, option: str = "--out") -> None:
    """Fail before any work when `path` cannot become an output folder: a file stands there or above it,
    or the nearest existing folder is not writable."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file; expected a folder (or a path that does not exist yet)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} is a file, so no folder can be made below it; "
                         "expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: {existing} is not writable; choose a folder you can write to")
