"""The plant's end of a serial line: a pty master an emulated device reads requests from and answers on.

The edge side opens the slave path with pyserial and cannot tell it from an adapter. Everything here is
non-blocking, so a plant step is never held by the line: what the edge does not read yet stays queued,
and what is written while nobody has the port open is dropped (counted), as on a dead cable.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import tty
from types import TracebackType
from typing import Self


def open_pty() -> tuple[int, str]:
    """A pty pair: (master fd, slave path). The slave is put in raw mode and closed again.

    Raw mode matters: the default line discipline turns CR into LF on input and echoes,
    which would mangle every telegram before pyserial (which sets raw mode itself) opens
    the port. The settings live in the pty, not the fd, so they outlast the closed slave.
    """
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        path = os.ttyname(slave)
    finally:
        os.close(slave)
    flags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return master, path


class PtyLine:
    """The line handling the pty emulators share: queue answers (``_out``), ``_flush`` them without blocking,
    ``_read_available`` requests, put noise on the line (``garbage``), pull the cable (``close``)."""

    def __init__(self, master_fd: int, rng: random.Random | None = None) -> None:
        self.fd: int | None = master_fd
        self._rng = rng or random.Random()
        self._out = bytearray()
        self.garbage_sent = 0     # random bytes put on the line by garbage()
        self.dropped_bytes = 0    # bytes written while nobody had the port open
        flags = fcntl.fcntl(master_fd, fcntl.F_GETFL)
        fcntl.fcntl(master_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def garbage(self, n_bytes: int) -> None:
        """Put n random bytes on the line towards the edge now (noise, a second talker)."""
        self._out += self._rng.randbytes(n_bytes)
        self.garbage_sent += n_bytes
        self._flush()

    def _read_available(self) -> bytes:
        if self.fd is None:
            return b""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO:   # no one has the slave open: nothing can arrive
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _flush(self) -> None:
        if self.fd is None or not self._out:
            return
        try:
            n = os.write(self.fd, self._out)
        except BlockingIOError:
            return                          # the edge is not reading: keep it for the next step
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            self.dropped_bytes += len(self._out)   # nobody listening: the device talks into the void
            n = len(self._out)
        del self._out[:n]

    def close(self) -> None:
        """Pull the cable: the edge's port fails and the slave path goes away."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
