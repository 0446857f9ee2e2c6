"""Files that must be whole: written to a temporary file beside the target, synced, renamed over it.

A rename within one folder is atomic, so after a crash or a power cut at any instant the file is the old
version or the new one, never a torn mix; syncing the folder afterwards makes the rename itself durable.
The run state, the batch records, the reports and the provisioned system files all rely on this.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def write_atomic(path: pathlib.Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` whole or not at all, with permissions ``mode``; no temporary file is left
    behind on failure (the error is raised)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)   # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
