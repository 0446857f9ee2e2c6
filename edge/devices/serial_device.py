"""One device on a serial line: its own thread, its port opened and reopened with capped back-off, counters.

Why a base: the Pfeiffer gauge, the Modbus bus and the sensor node each had a copy of this loop, and the
copies drifted (the gauge's thread died on any error that was not an OSError and never reopened its port,
the bus survived). A protocol module now supplies only what differs: how to open its port (and set up the
protocol state that goes with it), one exchange on the open port, and what to forget when it closes.

What the loop guarantees, for every device on it:

- a port that cannot be opened is retried after a back-off that doubles from ``backoff_min_s`` up to
  ``backoff_max_s`` (never more);
- a port that fails under an exchange (an OSError or a termios error: adapter unplugged, pty closed) is
  closed, counted lost (``port_lost``) and reopened after the back-off; the back-off returns to its minimum
  once an exchange completes, so a port that opens and fails at once is retried slower and slower, not spun on;
- any other exception from an exchange (a protocol bug, a library surprise) does not end the thread: it is
  counted (``internal_errors``), its text kept (``last_error``), logged with its traceback once per streak
  (a streak ends when an exchange completes), and the port is reopened after the back-off: the protocol's
  state may be wrong, a fresh port and fresh state are the known good start;
- ``stop()`` is prompt: every wait in the loop is a wait on the stop event, and a read blocked on the line is
  cancelled (pyserial's ``cancel_read``); the exchange itself checks :attr:`stopping` between reads;
- every change of the port's state is kept as a :class:`LinkChange` for the journal and the event stream
  (``drain_link_changes``): opened, could not be opened (with the cause), lost (with the cause), open again.
  Once per change, not once per retry: a port that stays absent is said once, and again only when the cause
  changes (absent, then present but refused: that is news for the technician at the cabinet).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import serial  # type: ignore[import-untyped]  # no stubs for pyserial 3.5 in the venv

log = logging.getLogger(__name__)

#: what an exchange raises when the port itself failed (SerialException is an OSError; tcflush raises termios.error)
PORT_FAILURES: tuple[type[BaseException], ...] = (OSError, termios.error)
#: what opening raises for a port that is not there, busy, or refuses the settings
OPEN_FAILURES: tuple[type[BaseException], ...] = (OSError, ValueError, termios.error)


class Line(Protocol):
    """What the loop needs of an open port: that it can be closed."""

    def close(self) -> None: ...


PortT = TypeVar("PortT", bound=Line)


@dataclass(frozen=True)
class LineCounters:
    """The line's side of a device's counters (a protocol module folds them into its own snapshot)."""

    opens: int = 0              # successful opens, the first one included
    open_failures: int = 0      # attempts to (re)open that failed
    port_lost: int = 0          # the port failed under an exchange (unplugged adapter, closed pty)
    reconnects: int = 0         # successful opens after the first
    internal_errors: int = 0    # unexpected errors in an exchange (logged; the port is reopened)
    connected: bool = False
    last_error: str = ""
    backoff_s: float = 0.0      # what the next failure waits before the port is tried again


@dataclass(frozen=True)
class LinkChange:
    """One change of a device's port: ``opened`` (open for the first time), ``cannot_open`` (the first failed
    attempt of a streak, or its cause changed), ``lost`` (failed under an exchange), ``reopened`` (open again
    after a loss). ``cause``: why it is not open (empty when open)."""

    device: str
    port: str
    change: str
    cause: str = ""
    attempts: int = 0           # opened/reopened: the failed attempts before it; cannot_open: attempts so far
    down_s: float = 0.0         # opened/reopened: wall seconds since it was lost (or first tried)

    @property
    def up(self) -> bool:
        return self.change in ("opened", "reopened")

    def text(self) -> str:
        """What happened to the port, for a person (the caller names the instruments on it)."""
        after = f" (after {self.attempts} failed attempt(s), {self.down_s:.0f} s)" if self.attempts else ""
        if self.change == "opened":
            return f"port {self.port} open{after}"
        if self.change == "reopened":
            return f"port {self.port} open again{after}"
        if self.change == "lost":
            return f"port {self.port} lost: {self.cause}; reopened as soon as it is back"
        return f"could not open port {self.port}: {self.cause}; retried until it opens"


def error_cause(error: BaseException) -> str:
    """The cause in the words of the operating system ("No such file or directory", "Permission denied",
    "Device or resource busy"), without the repeated path and errno pyserial wraps it in."""
    errno = getattr(error, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return str(error) or type(error).__name__


MAX_LINK_CHANGES = 256   # kept until drained; past that the oldest go (a reader that never drains)


class SerialDevice(Generic[PortT]):
    """A device on one serial port, served by its own thread. Subclasses supply the protocol:

    - :meth:`_open_port` opens the port (raising an OSError or ValueError when it cannot) and sets up the
      protocol state of a fresh connection;
    - :meth:`_exchange` does one pass on the open port (a poll, a transaction, a read-and-answer) and returns
      how long to wait before the next (0: at once); port failures propagate;
    - :meth:`_close_port` closes it (and forgets what belonged to the connection).
    """

    def __init__(self, name: str, port_name: str, *, backoff_min_s: float, backoff_max_s: float) -> None:
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"{name}: back-off must be 0 < min <= max, got {backoff_min_s} and {backoff_max_s}")
        self.name = name              # for the journal: "gauge chamber_vacuum", "sensor node retort_node"
        self.port_name = port_name
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()   # guards the counters (the subclass's own too, if it likes)
        self._line = LineCounters(backoff_s=backoff_min_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: PortT | None = None
        self._port_lock = threading.Lock()   # the stopping thread cancels a read on the port this one owns
        self._streak = False                 # an unexpected error was logged and no exchange completed since
        self._changes: collections.deque[LinkChange] = collections.deque(maxlen=MAX_LINK_CHANGES)
        self._down_cause: str | None = None  # the cause last said while the port is not open (None: open/untried)
        self._down_since: float | None = None   # monotonic: when the port was last open, or first tried
        self._failed_attempts = 0            # since the port was last open
        self._quiet_reopen = False           # the port was closed after an unexpected error: not a link change
        self._was_open = False               # opened once: the next open is a reopening

    # ---- the protocol's part ----

    def _open_port(self) -> PortT:
        raise NotImplementedError

    def _exchange(self, port: PortT) -> float:
        raise NotImplementedError

    def _close_port(self, port: PortT) -> None:
        with contextlib.suppress(*PORT_FAILURES):
            port.close()

    def _cancel_read(self, port: PortT) -> None:
        """Abort a read blocked on the line, so a long timeout does not hold ``stop()``."""
        if isinstance(port, serial.Serial):
            with contextlib.suppress(*PORT_FAILURES):
                port.cancel_read()

    def _note(self, text: str) -> None:
        """Keep ``text`` as the last error (a protocol module calls this for its own errors too)."""
        with self._lock:
            self._line = replace(self._line, last_error=text)

    def _unexpected(self, error: Exception) -> str | None:
        """An exchange raised ``error`` (already counted): what to name in the journal if it starts a streak
        (its traceback is then logged), None if it continues one.

        A protocol module with several subjects on one port (the instruments of a bus) keeps a streak each.
        """
        first = not self._streak
        self._streak = True
        return self.name if first else None

    def _sleep(self, seconds: float) -> None:
        """Every wait of the loop: on the stop event, so ``stop()`` ends it at once."""
        self._stop.wait(seconds)

    # ---- life cycle ----

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.name} already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Tell the thread to end and cancel its read; does not wait (a bus asks all its ports first)."""
        self._stop.set()
        with self._port_lock:
            if self._port is not None:
                self._cancel_read(self._port)

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to end; whether it did. The port is closed either way."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        ended = thread is None or not thread.is_alive()
        if not ended:
            log.error("%s: its thread did not end within %.1f s of stop; closing its port under it", self.name,
                      timeout_s)
        self._drop_port()
        return ended

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the port; returns once the thread has ended (or after ``timeout_s``)."""
        self.request_stop()
        self.join(timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def line_counters(self) -> LineCounters:
        with self._lock:
            return self._line

    def drain_link_changes(self) -> list[LinkChange]:
        """The port's state changes since the last call, oldest first (the controller's thread calls this)."""
        with self._lock:
            out = list(self._changes)
            self._changes.clear()
        return out

    def _change(self, change: str, cause: str = "",
                count: Callable[[LineCounters], LineCounters] | None = None) -> None:
        """Keep a state change of the port (see :class:`LinkChange`); a failed open is kept only when it is news.
        ``count`` updates the line's counters under the same lock: whoever reads a counter that says the port
        changed (``counters()``) finds the change in ``drain_link_changes`` too, never just after."""
        now = time.monotonic()
        with self._lock:
            if count is not None:
                self._line = count(self._line)
            if change == "cannot_open":
                self._failed_attempts += 1
                if self._down_since is None:
                    self._down_since = now
                if self._down_cause == cause:
                    return                       # the same cause again: a retry, not a change
                self._down_cause = cause
                self._changes.append(LinkChange(self.name, self.port_name, change, cause, self._failed_attempts))
            elif change == "lost":
                self._down_cause, self._down_since, self._failed_attempts = cause, now, 0
                self._changes.append(LinkChange(self.name, self.port_name, change, cause))
            else:
                quiet, self._quiet_reopen = self._quiet_reopen and self._down_since is None, False
                if not quiet:                    # (closed and reopened by us after a surprise: the link held)
                    down_s = now - self._down_since if self._down_since is not None else 0.0
                    self._changes.append(LinkChange(self.name, self.port_name,
                                                    "reopened" if self._was_open else "opened",
                                                    attempts=self._failed_attempts, down_s=down_s))
                self._was_open = True
                self._down_cause, self._down_since, self._failed_attempts = None, None, 0

    # ---- the thread ----

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                port = self._port
                if port is None:
                    port = self._open()
                    if port is None:
                        self._back_off()
                        continue
                try:
                    wait_s = self._exchange(port)
                except PORT_FAILURES as e:
                    if self._stop.is_set():
                        break            # a read cancelled by stop(): not a loss
                    self._lost(e)
                    self._back_off()
                    continue
                except Exception as e:   # a bug or a library surprise must not end the thread unseen
                    self._failed(e)
                    self._back_off()
                    continue
                self._streak = False
                with self._lock:
                    self._line = replace(self._line, backoff_s=self.backoff_min_s)
                if wait_s > 0:
                    self._sleep(wait_s)
        finally:
            self._drop_port()

    def _open(self) -> PortT | None:
        try:
            port = self._open_port()
        except OPEN_FAILURES as e:
            self._note(f"cannot open {self.port_name}: {e}")
            log.debug("%s: cannot open %s: %s", self.name, self.port_name, e)
            self._change("cannot_open", error_cause(e), lambda c: replace(c, open_failures=c.open_failures + 1))
            return None
        except Exception as e:
            self._failed(e)
            self._change("cannot_open", f"unexpected {type(e).__name__}: {e}")
            return None
        with self._port_lock:
            self._port = port
        again = self._was_open
        self._change("opened", count=lambda c: replace(c, opens=c.opens + 1, connected=True,
                                                        reconnects=c.reconnects + (c.opens > 0)))
        if again:
            log.warning("%s: %s open again", self.name, self.port_name)
        return port

    def _lost(self, error: BaseException) -> None:
        log.warning("%s: port %s lost: %s", self.name, self.port_name, error)
        self._note(f"port {self.port_name} lost: {error}")
        self._change("lost", error_cause(error), lambda c: replace(c, port_lost=c.port_lost + 1))
        self._drop_port()

    def _failed(self, error: Exception) -> None:
        with self._lock:
            self._line = replace(self._line, internal_errors=self._line.internal_errors + 1)
        self._note(f"unexpected {type(error).__name__}: {error}")
        subject = self._unexpected(error)
        if subject is not None:
            log.error("%s: unexpected error; the port %s is reopened after a back-off", subject, self.port_name,
                      exc_info=error)
        else:
            log.debug("%s: unexpected error again: %r", self.name, error)
        with self._lock:
            self._quiet_reopen = self._port is not None
        self._drop_port()

    def _back_off(self) -> None:
        with self._lock:
            wait_s = self._line.backoff_s
            self._line = replace(self._line, backoff_s=min(wait_s * 2, self.backoff_max_s))
        self._sleep(wait_s)

    def _drop_port(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        if port is not None:
            with self._lock:
                self._line = replace(self._line, connected=False)
            self._close_port(port)
