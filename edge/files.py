"""Files that must be whole: written to a temporary file beside the target, synced, renamed over it.

A rename within one folder is atomic, so after a crash or a power cut at any instant the file is the old
version or the new one, never a torn mix; syncing the folder afterwards makes the rename itself durable.
The run state, the batch records, the reports and the provisioned system files all rely on this.

And whether a folder can take them at all (``room_problem``): checked before a batch starts, and at start.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Callable


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


#: The free space a batch needs on the state dir's disk before it may start. What one batch writes there: its
#: run state (a few kB, rewritten every few seconds through a temporary copy), its record (11 kB measured for a
#: 12.5-hour HD batch) and trend (523 kB for it: 4491 rows, one every 10 s). 16 MiB covers them many times
#: over (the MQTT outbox beside them has its own quota and thins telemetry first): a disk this close to full is
#: a technician's job before a batch, not something to find out half-way through one.
BATCH_MIN_FREE_BYTES = 16 * 1024 * 1024


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def writable_problem(folder: pathlib.Path, *, write: bool = True) -> str | None:
    """Why ``folder`` cannot take a new file now ("Read-only file system", "Permission denied", "No space
    left on device"), or None. Tried for real (a small file created, with ``write`` written and synced, and
    removed): permission bits say nothing to root, nor about a file system remounted read-only after an SD card
    error. Without ``write`` only the creation is tried (a full disk still creates an empty file)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        try:
            if write:
                os.write(fd, b"reedge write check\n")
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return None


def room_problem(folder: pathlib.Path, min_free_bytes: int = BATCH_MIN_FREE_BYTES, *,
                 free_bytes: Callable[[pathlib.Path], int] | None = None) -> str | None:
    """Why ``folder`` cannot take a batch's run state and record (not writable, or less than ``min_free_bytes``
    free for an unprivileged writer), as a technician's sentence naming the folder, or None. ``free_bytes``:
    the free-space reading (default ``statvfs``; a test's seam)."""
    why = writable_problem(folder)
    if why is not None:
        return f"the state dir {folder} cannot be written ({why})"
    try:
        free = free_bytes(folder) if free_bytes is not None else _free_bytes(folder)
    except OSError as exc:
        return f"the state dir {folder}: free space unknown ({exc.strerror or exc})"
    if free < min_free_bytes:
        return (f"the state dir {folder} has {_mib(free)} free, a batch needs at least {_mib(min_free_bytes)} for "
                "its run state and record: free space on that disk (old batch folders can be archived) "
                "or point --state-dir at a disk with room")
    return None


def _free_bytes(folder: pathlib.Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
