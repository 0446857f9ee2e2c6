"""Group commit for the outbox: puts commit without an fsync, one fsync of the WAL covers all of them.

With ``synchronous="GROUP"`` (the outbox's default) every transaction commits with SQLite's
``synchronous=NORMAL``: its frames are written to the ``-wal`` file (a process kill keeps them:
the OS has them), not fsynced. ``GroupCommit.sync`` then fsyncs the ``-wal`` file through a
descriptor of its own, outside the outbox's lock, so the controller thread never waits for a
disk flush: everything committed before the fsync began is durable when it returns (the WAL is
one file, written in order; a checkpoint, which SQLite runs with ``NORMAL`` too, fsyncs the WAL
before copying it into the database and the database after). Two things call it:

* the **syncer thread**, woken by every commit: a put is durable at most one fsync after its
  commit, plus the one that may be running (an SD card: 2 to 20 ms each), also while no broker is
  there (a trip put during an outage must survive a power cut);
* ``Outbox.pending`` and the session before it acknowledges commands (``MqttSession._send_acks``),
  which must not go ahead of the fsync that covers what they rely on.

**A failed fsync is final** (until the outbox is opened again). After an fsync error Linux may have
dropped the dirty pages it could not write and report the next fsync as a success without them, so
retrying would mark as durable what is not on the disk. The durable point stops where it was: nothing
more is handed out for sending and no command is acknowledged (``sync`` raises ``OSError`` again),
the station goes on controlling, and its log says to restart it: opening the outbox again fsyncs
what the file holds, and publishing resumes from there (PostgreSQL's answer to the same kernel
behaviour, 2018).

``durable_id`` is the highest message id an fsync covers and ``durable_gen`` the number of commits
it covers; ``pending`` hands out nothing above them. With ``"FULL"`` (SQLite fsyncs every commit)
and ``"NORMAL"`` (no fsync at all: a host with power-loss protection) a commit is as durable as it
will get when it returns, and ``sync`` has nothing to do.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["GROUP", "FULL", "NORMAL"]


class GroupCommit:
    """The durable point of one outbox file (module docstring). ``committed`` is called by the outbox after
    each commit (under its lock); ``sync`` from any thread; ``close`` once, after the last commit."""

    def __init__(self, wal_path: str, mode: Mode) -> None:
        self.mode = mode
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()    # one fsync at a time: a second caller finds its commits covered
        self._gen = self._durable_gen = 0
        self._top = self._durable_id = 0
        self._closing = False
        self._failed: OSError | None = None    # the fsync error that froze the durable point
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        if mode == "GROUP":
            self._fd = os.open(wal_path, os.O_RDONLY | os.O_CLOEXEC)
            directory = os.open(os.path.dirname(wal_path) or ".", os.O_RDONLY | os.O_CLOEXEC)
            try:        # the -wal file's name must survive a power cut too (SQLite would sync it only later)
                os.fsync(directory)
            finally:
                os.close(directory)
            self._thread = threading.Thread(target=self._syncer, name=f"outbox-sync {wal_path}", daemon=True)
            self._thread.start()

    def committed(self, top_id: int) -> int:
        """A transaction committed, its newest message id ``top_id`` (0: none). Returns its generation."""
        with self._cond:
            self._gen += 1
            self._top = max(self._top, top_id)
            if self._fd is None:
                self._durable_gen, self._durable_id = self._gen, self._top
            else:
                self._cond.notify_all()
            return self._gen

    @property
    def durable_id(self) -> int:
        with self._cond:
            return self._durable_id

    @property
    def durable_gen(self) -> int:
        with self._cond:
            return self._durable_gen

    @property
    def failed(self) -> bool:
        """An fsync failed: the durable point is frozen until the outbox is opened again."""
        return self._failed is not None

    @property
    def behind(self) -> bool:
        """Some commit is not covered by an fsync yet."""
        with self._cond:
            return self._durable_gen < self._gen

    def sync(self, *, wait: bool = True) -> None:
        """Return once everything committed before this call is fsynced; OSError if the fsync fails.
        ``wait=False``: return at once instead if an fsync is running (it covers what it covers)."""
        if self._failed is not None:
            raise OSError(self._failed.errno, f"an earlier fsync of the outbox failed ({self._failed.strerror}):"
                                              " nothing more is durable until the station is restarted")
        if self._fd is None or not self.behind:
            return
        if not self._sync_lock.acquire(blocking=wait):
            return
        try:
            fd = self._fd            # None once closed (close takes this lock to close it)
            with self._cond:
                gen, top = self._gen, self._top
                if fd is None or self._durable_gen >= gen:
                    return
            try:
                os.fsync(fd)
            except OSError as e:
                self._failed = e            # final: see the module docstring
                raise
            with self._cond:
                self._durable_gen, self._durable_id = max(self._durable_gen, gen), max(self._durable_id, top)
                self._cond.notify_all()
        finally:
            self._sync_lock.release()

    def _syncer(self) -> None:
        while True:
            with self._cond:
                while not self._closing and self._durable_gen >= self._gen:
                    self._cond.wait()
                if self._closing:
                    return
            try:
                self.sync()
            except OSError as e:   # pending and the command acks raise it too
                log.error("outbox: cannot fsync the WAL (%s): nothing more is sent and no command acknowledged;"
                          " the station goes on controlling: restart it (reedge run) once the disk is checked", e)
                return

    def close(self) -> None:
        """Stop the syncer, fsync what is left, let go of the descriptor. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            try:
                if self._failed is None:
                    self.sync()
            except OSError as e:     # a failed fsync at the end: reported, the file is closed anyway
                log.error("outbox: cannot fsync the WAL at close (%s): the last puts may not be durable", e)
            finally:
                with self._sync_lock:
                    os.close(self._fd)
                    self._fd = None
